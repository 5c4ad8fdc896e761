"""The native webhook mapper (``_fastmap.c``): loaded when built, current and not disabled.

``mapping.py`` defines what every item becomes; the extension is an accelerator that
produces the same record bytes for the common shape of each kind and hands every other
item back to ``mapping.map_item``. ``tests/producers/webhook/test_fastmap.py`` compares
the two paths.

The build embeds the SHA-256 of the C source. In a source tree where ``_fastmap.c`` was
edited after the last build, the stale extension is not used (a warning says to rebuild
with ``pip install -e .``): mapping with old native code next to new Python code is worse
than mapping slowly. ``CONVSYNC_GATEWAY_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import ModuleType

import orjson

from schemas.envelope import PLAIN_JSON

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_fastmap.c")
ENV_SWITCH = "CONVSYNC_GATEWAY_NATIVE"


def load() -> ModuleType | None:
    """Return the configured ``_fastmap`` module, or None (Python mapping; reason logged)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("native webhook mapper off (%s)", ENV_SWITCH)
        return None
    try:
        from producers.webhook import _fastmap
    except ImportError as e:
        log.warning("native webhook mapper not built (%s); mapping in Python", e)
        return None
    if SOURCE.exists():
        current = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
        if current != _fastmap.SOURCE_SHA:
            log.warning(
                "native webhook mapper is older than %s; mapping in Python until it is "
                "rebuilt (pip install -e .)",
                SOURCE.name,
            )
            return None
    _fastmap.configure(orjson.dumps, orjson.OPT_SORT_KEYS, PLAIN_JSON)
    return _fastmap
