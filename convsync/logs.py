"""Logging set-up for entry points, with secrets redacted from every line."""

from __future__ import annotations

import json
import logging
import re
import time
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(
    level: str = "INFO", *, secrets: Iterable[str] = (), json_format: bool = False
) -> None:
    """Configure the root logger once for a process (text or JSON lines, secrets redacted)."""
    handler = logging.StreamHandler()
    if json_format:
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
