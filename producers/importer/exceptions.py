"""Errors of the importer."""

from __future__ import annotations

from convsync.errors import ConvsyncError


class ImportLineError(ConvsyncError):
    """A line of an import file that is not a message of the format; ``lineno`` counts
    from 1."""

    def __init__(self, lineno: int, reason: str) -> None:
        super().__init__(f"line {lineno}: {reason}")
        self.lineno = lineno
        self.reason = reason
