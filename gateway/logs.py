"""Structured, quiet logs: one line per event, ``key=value`` or JSON.

Call sites log a short event name and pass fields as ``extra={"fields": {...}}``,
so logs can be filtered and counted without parsing prose.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(fields, default=str, ensure_ascii=False)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure(level: str = "warning", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(fmt == "json"))
    root = logging.getLogger("stockwire")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The websockets library logs every failed handshake at error level; our
    # own refusal counters carry that information without the noise.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
