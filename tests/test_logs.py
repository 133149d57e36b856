"""Logs: one line per event, and real failures are never silenced."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import msgpack
import pytest
from websockets.exceptions import InvalidUpgrade

from gateway import logs
from gateway.protocol import CloseCode
from gateway.server import Gateway
from tests.conftest import gateway_settings
from tests.screens import Screen

LOGGERS = ("stockwire", "websockets")


@pytest.fixture
def configured() -> Iterator[None]:
    """Leave logging as it was: other tests capture records through propagation."""
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in LOGGERS}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def failure(exc: BaseException) -> tuple[type[BaseException], BaseException, None]:
    return type(exc), exc, None


@pytest.mark.usefixtures("configured")
def test_library_errors_get_through_and_handshake_noise_does_not(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning", "json")
    library = logging.getLogger("websockets.server")
    library.info("connection rejected (426 Upgrade Required)")
    library.error("opening handshake failed", exc_info=failure(InvalidUpgrade("Upgrade", None)))
    library.error("opening handshake failed", exc_info=failure(EOFError("connection closed")))
    library.error("connection handler failed", exc_info=failure(RuntimeError("handler bug")))
    logging.getLogger("stockwire.server").warning("something.odd", extra={"fields": {"room": "r"}})
    (crash, odd) = lines(capsys.readouterr().err)
    assert (crash["logger"], crash["level"], crash["event"]) == (
        "websockets.server", "error", "connection handler failed")
    assert "RuntimeError: handler bug" in str(crash["error"])
    assert (odd["event"], odd["room"]) == ("something.odd", "r")


@pytest.mark.usefixtures("configured")
def test_text_lines_stay_one_line_with_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning", "text")
    try:
        raise ValueError("multi\nline")
    except ValueError:
        logging.getLogger("stockwire.hub").exception("flush.failed", extra={"fields": {"room": "a b"}})
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ts=")
    assert "event=flush.failed" in line
    assert 'room="a b"' in line
    assert "ValueError: multi\\nline" in line


@pytest.mark.usefixtures("configured")
async def test_a_crash_in_a_connection_is_logged_counted_and_closed_1011(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.configure("warning", "json")
    gw = Gateway(gateway_settings(redis_url))
    await gw.start()
    try:
        async with Screen(f"{gw.url}/ws/r") as screen:
            await screen.until(lambda s: s.frames)

            def broken(client: object) -> None:
                raise RuntimeError("resync bug")

            monkeypatch.setattr(gw.hub, "resync", broken)
            assert screen.ws is not None
            await screen.ws.send(msgpack.packb({"t": "resync"}))
            assert await screen.closed() == CloseCode.INTERNAL_ERROR
    finally:
        await gw.stop()
    (record,) = [r for r in lines(capsys.readouterr().err) if r["event"] == "connection.failed"]
    assert record["room"] == "r"
    assert "RuntimeError: resync bug" in str(record["error"])
    assert gw.metrics.client_closes.labels("internal_error")._value.get() == 1
