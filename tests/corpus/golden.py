"""What the gateway and the mapper decide for each body of the webhook corpus, as golden-file bytes.

Run from the repository root to (re)write every golden file from the code as it is::

    .venv/bin/python -m tests.corpus.golden

``tests/producers/webhook/test_corpus.py`` compares the code's decisions with the
committed files byte for byte, and ``tests/producers/webhook/test_mapper_corpus.py`` runs
the corpus through a real gateway and mapper on Kafka against the same files. The gateway
publishes deliveries (one per entry); the records here are the events the mapper makes of
them (:func:`producers.webhook.deliveries.map_delivery`), which are what the gateway
published when it mapped in place. Rewrite them only for an intended change of the events
a body becomes, and say why in the commit message.

A golden file is the decision's header as one JSON line (status, and the reason of a
refusal or the kinds and ignored entry fields of an acceptance), then one line per record
in publishing order: the key, a tab, and the record value exactly as published (JSON
escapes every control character, so a value never holds a raw newline or tab).
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from pathlib import Path
from typing import Final

import orjson

from producers.webhook.admit import Accepted, admit
from producers.webhook.deliveries import Mapped, map_delivery

HERE: Final = Path(__file__).resolve().parent
# webhooks/: realistic bodies of both platforms; edge/: odd items and entries (control
# characters, fields of every type, missing ids...), one per body. Names are unique.
CORPORA: Final = (HERE / "webhooks", HERE / "edge")
GOLDEN: Final = HERE / "golden"
SECRET: Final = b"corpus-app-secret"
MAX_RECORD_BYTES: Final = 1_000_000


def bodies() -> list[Path]:
    """Return the corpus's body files, sorted by name."""
    return sorted((p for corpus in CORPORA for p in corpus.glob("*.json")), key=lambda p: p.name)


def golden_path(body: Path) -> Path:
    """Return the golden file of a corpus body."""
    return GOLDEN / f"{body.stem}.records"


def decide(raw: bytes) -> bytes:
    """Return the golden-file bytes of what admission decides for ``raw``, signed."""
    header = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    decision = admit(SECRET, raw, header, max_record_bytes=MAX_RECORD_BYTES)
    if not isinstance(decision, Accepted):
        head = {"status": decision.status, "reason": decision.reason, "detail": decision.detail}
        return orjson.dumps(head) + b"\n"
    return golden_bytes(
        200, [map_delivery(value) for _key, value in decision.records], decision.ignored
    )


def golden_bytes(status: int, mapped: list[Mapped], ignored: list[str]) -> bytes:
    """Return the golden-file bytes of an accepted body whose deliveries became ``mapped``."""
    kinds = [kind for m in mapped for kind in m.kinds]
    failures = [f.reason for m in mapped for f in m.failures]
    head: dict[str, object] = {"status": status, "kinds": kinds, "ignored": ignored}
    if failures:
        head["failures"] = failures
    lines = [orjson.dumps(head)]
    lines += [key + b"\t" + value for m in mapped for key, value in m.records]
    return b"\n".join(lines) + b"\n"


def write() -> list[Path]:
    """Write the golden file of every corpus body; return the paths written."""
    GOLDEN.mkdir(exist_ok=True)
    out = []
    for body in bodies():
        path = golden_path(body)
        path.write_bytes(decide(body.read_bytes()))
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write():
        sys.stdout.write(f"wrote {p}\n")
