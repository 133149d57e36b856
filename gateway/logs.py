"""Structured, quiet logs: one line per event, ``key=value`` or JSON.

Call sites log a short event name and pass fields as ``extra={"fields": {...}}``,
so logs can be filtered and counted without parsing prose.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from websockets.exceptions import InvalidHandshake

#: Exceptions of a failed opening handshake that the client caused.
NOISE = (InvalidHandshake, EOFError, ConnectionError, TimeoutError)


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


class _HandshakeNoise(logging.Filter):
    """Drop websockets' reports of handshakes the client broke (scanners, half-open
    sockets, timeouts): the refusal counters carry those.  Anything else at
    error level (a handler or parser that crashed) is a bug and gets through."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, NOISE)


def configure(level: str = "warning", fmt: str = "text") -> None:
    formatter = _Formatter(fmt == "json")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger("stockwire")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # websockets logs connection opens and refusals at info and its own
    # failures at error; only the failures belong in our logs, in our format.
    # The filter sits on the handler: records of websockets.server and other
    # child loggers skip the filters of the "websockets" logger itself.
    library_handler = logging.StreamHandler()
    library_handler.setFormatter(formatter)
    library_handler.addFilter(_HandshakeNoise())
    library = logging.getLogger("websockets")
    library.handlers[:] = [library_handler]
    library.setLevel(logging.ERROR)
    library.propagate = False
