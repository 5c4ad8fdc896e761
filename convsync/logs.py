"""Logging set-up for entry points, with secrets redacted from every line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_SIGNATURE = re.compile(r"(sha(?:1|256)=)[0-9a-fA-F]{8,}")
_TOKENISH = re.compile(r"((?:access_token|token|secret|password|appsecret_proof)=)[^&\s\"']+")


class RedactingFilter(logging.Filter):
    """Replace known secret values and signature/token patterns in log records."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Return ``text`` with secrets replaced by ``***``."""
        for s in self._secrets:
            text = text.replace(s, "***")
        text = _SIGNATURE.sub(r"\1***", text)
        return _TOKENISH.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


def setup_logging(level: str = "INFO", *, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once for a process."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
