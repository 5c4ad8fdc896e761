"""What every command shares: the settings of this environment and the error console."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from convsync.settings import Settings

console = Console(stderr=True)
StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Folder for the local stack (default .convsync/)."),
]


def state_folder(value: Path | None = None) -> Path:
    """Return the local stack's folder: ``value``, else ``CONVSYNC_STATE_DIR``, else .convsync."""
    return value or Path(os.environ.get("CONVSYNC_STATE_DIR") or ".convsync")


def load_settings() -> Settings:
    """Build settings from the environment, falling back to the local stack's file."""
    from deploy.stack import stack_settings

    return stack_settings(state_folder())
