"""The virtual environment the Quix Streams side of the peer benchmarks runs in.

``quixstreams`` pins confluent-kafka, pydantic and pydantic-settings below the versions
convsync installs, so it does not go into convsync's own environment (the tests would
then run on other client libraries than a user gets). It lives in ``.venv-peers``, made
on first use with the project installed editable next to it; the Quix apps
(``tests/bench/quix_apps.py``) run as child processes of that interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
VENV: Final = REPO / ".venv-peers"
REQUIREMENT: Final = "quixstreams[postgresql]>=3.28,<4"


def python() -> str:
    """Return the interpreter of ``.venv-peers``, creating the environment if needed."""
    exe = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    if not stamp.exists() or (REPO / "pyproject.toml").stat().st_mtime > stamp.stat().st_mtime:
        if not exe.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        print(f"peers: installing {REQUIREMENT} into {VENV}", file=sys.stderr)
        subprocess.run(
            [str(exe), "-m", "pip", "install", "-q", "-e", str(REPO), REQUIREMENT],
            check=True,
        )
        stamp.touch()
    return str(exe)
