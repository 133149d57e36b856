"""The terminal viewer: the pure table, and watch() against an in-test server."""

from __future__ import annotations

import asyncio
import io
import re
import socket
from collections.abc import AsyncIterator

import pytest

from clients.client import PermanentError
from clients.watch import format_age, render_table, watch
from tests.clients.fakes import ROOM, WAIT, FakeGateway, item, snap, upd, wire

NOW = 1_700_000_000_000
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.mark.parametrize(
    ("age", "text"),
    [(None, "-"), (-50, "0.0s"), (0, "0.0s"), (420, "0.4s"), (9_949, "9.9s"), (12_500, "12s"),
     (185_000, "3m05s"), (7_260_000, "2h01m")],
)
def test_format_age(age: int | None, text: str) -> None:
    assert format_age(age) == text


def test_viewer_table() -> None:
    items = {
        "b-2": item("b-2", 0, 7, st="out", ts=NOW - 3_000),
        "a-1": item("a-1", 120, 12, st="low", ts=NOW - 400, name="hidden from viewers"),
    }
    text = render_table(items, role="viewer", now_ms=NOW, connected=True, room=ROOM)
    lines = text.splitlines()
    assert lines[0] == "stockwire room-1 (viewer) connected, 2 items"
    assert lines[1].split() == ["SKU", "QTY", "STATUS", "VER", "AGE"]
    assert set(lines[2]) <= {"-", " "}
    assert lines[3].split() == ["a-1", "120", "low", "12", "0.4s"]  # sorted by SKU
    assert lines[4].split() == ["b-2", "0", "out", "7", "3.0s"]
    assert "hidden" not in text
    assert text.endswith("\n")
    # Numbers are right-aligned under their headers.
    assert lines[1].index("QTY") + 3 == lines[4].index("0") + 1


def test_host_table_shows_names_and_alert_tiers() -> None:
    long_name = "A very long product name that will not fit in the column"
    items = {
        "mug": item("mug", 3, 4, st="low", ts=NOW, name="Blue mug", initial=100,
                    alert="critical", platforms={"tiktok": 3}),
        "pen": item("pen", 50, 1, ts=NOW - 65_000, name=long_name, alert="ok"),
        "cap": item("cap", 9, 2, st="ok", ts=NOW),  # no name, no alert
    }
    text = render_table(items, role="host", now_ms=NOW, connected=True)
    lines = text.splitlines()
    assert lines[0] == "stockwire (host) connected, 3 items"
    assert lines[1].split() == ["SKU", "NAME", "QTY", "STATUS", "VER", "AGE"]
    assert lines[3].split() == ["cap", "-", "9", "ok", "2", "0.0s"]
    assert lines[4].split() == ["mug", "Blue", "mug", "3", "critical", "4", "0.0s"]
    assert "1m05s" in lines[5]
    assert long_name not in text
    assert "…" in lines[5]


def test_disconnected_and_empty() -> None:
    text = render_table({}, role="viewer", now_ms=NOW, connected=False, room=ROOM)
    assert "DISCONNECTED" in text.splitlines()[0]
    assert "0 items" in text
    assert "(no items)" in text


def test_color_only_adds_escapes() -> None:
    items = {"a": item("a", 0, 1, st="out", ts=NOW), "b": item("b", 5, 1, st="ok", ts=NOW)}
    plain = render_table(items, role="viewer", now_ms=NOW, connected=True)
    colored = render_table(items, role="viewer", now_ms=NOW, connected=True, color=True)
    assert colored != plain
    assert ANSI.sub("", colored) == plain
    assert "\x1b[" not in plain


def test_missing_fields_render_as_dashes() -> None:
    text = render_table({"x": {"sku": "x", "ver": 3}}, role="viewer", now_ms=NOW,
                        connected=True)
    assert text.splitlines()[3].split() == ["x", "-", "-", "3", "-"]


class Screen(io.StringIO):
    """Captures output and wakes the test on every write, so it need not poll."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)

    async def wait_for_text(self, text: str) -> None:
        async with asyncio.timeout(WAIT):
            while text not in self.getvalue():
                self.written.clear()
                await self.written.wait()


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as gateway:
        yield gateway


async def test_watch_once_prints_the_first_snapshot(gw: FakeGateway) -> None:
    out = io.StringIO()
    task = asyncio.create_task(watch(gw.url, ROOM, role="host", once=True, stream=out))
    ws = await gw.accept()
    assert gw.paths == ["/ws/room-1?role=host"]
    await ws.send(wire(snap(1, [item("mug", 3, 4, name="Blue mug", alert="low")])))
    await asyncio.wait_for(task, WAIT)
    text = out.getvalue()
    assert "stockwire room-1 (host) connected, 1 items" in text
    assert "Blue mug" in text
    assert "\x1b[" not in text  # not a terminal: no escapes


async def test_watch_redraws_on_updates(gw: FakeGateway) -> None:
    out = Screen()
    task = asyncio.create_task(watch(gw.url, ROOM, stream=out, token="t"))
    try:
        ws = await gw.accept()
        assert gw.paths == ["/ws/room-1?role=viewer&token=t"]
        await ws.send(wire(snap(1, [item("mug", 3, 4)])))
        await out.wait_for_text(" ok ")
        await ws.send(wire(upd(2, [item("mug", 0, 5, st="out")])))
        await out.wait_for_text(" out ")
        assert out.getvalue().count("stockwire room-1 (viewer) connected") >= 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watch_raises_permanent_errors(gw: FakeGateway) -> None:
    task = asyncio.create_task(watch(gw.url, ROOM, stream=io.StringIO()))
    ws = await gw.accept()
    await ws.close(4404, "invalid room name")
    with pytest.raises(PermanentError, match="4404"):
        await asyncio.wait_for(task, WAIT)


async def test_watch_once_gives_up_after_the_snapshot_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TimeoutError):
        await watch(f"ws://127.0.0.1:{port}", ROOM, once=True, stream=io.StringIO(),
                    snapshot_timeout=0.05)
