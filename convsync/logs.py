"""Logging set-up for entry points, with secrets redacted from every line written.

Redaction applies to the line as the formatter wrote it (the message, the exception's
traceback with its whole chain, and a stack), not to the message alone: a secret inside
an exception's text reaches the log through the traceback, which no message filter sees.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable

_SIGNATURE = re.compile(r"(sha(?:1|256)=)[0-9a-fA-F]{8,}")
_TOKENISH = re.compile(r"((?:access_token|token|secret|password|appsecret_proof)=)[^&\s\"']+")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Redactor:
    """Replaces known secret values and signature/token patterns in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Return ``text`` with secrets replaced by ``***``."""
        for s in self._secrets:
            text = text.replace(s, "***")
        text = _SIGNATURE.sub(r"\1***", text)
        return _TOKENISH.sub(r"\1***", text)


class RedactingFormatter(logging.Formatter):
    """A text formatter whose whole output (message, traceback, stack) is redacted."""

    def __init__(self, redactor: Redactor, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception), each
    text redacted before it is JSON-escaped (an escaped secret would not match)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redactor.redact
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False)


def setup_logging(
    level: str = "INFO", *, secrets: Iterable[str] = (), json_format: bool = False
) -> None:
    """Configure the root logger once for a process (text or JSON lines, secrets redacted)."""
    handler = logging.StreamHandler()
    redactor = Redactor(secrets)
    if json_format:
        formatter: logging.Formatter = JsonFormatter(redactor)
        formatter.converter = time.gmtime
    else:
        formatter = RedactingFormatter(redactor)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # psycopg_pool logs every connection handed out at INFO; its warnings (connection
    # attempts failing during an outage) still come through.
    pool_level = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    logging.getLogger("psycopg.pool").setLevel(pool_level)
