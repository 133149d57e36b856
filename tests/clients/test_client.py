"""The client SDK: protocol rules as plain calls, I/O against an in-test server."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

import clients.client as client_mod
from clients.client import (
    MAX_RETRY_AFTER,
    PERMANENT_CLOSE_CODES,
    ClientClosed,
    PermanentError,
    Snapshot,
    StockClient,
    Update,
    backoff_delay,
    build_url,
    now_ms,
    retry_after_seconds,
)
from gateway.protocol import CloseCode
from tests.clients.fakes import ROOM, WAIT, FakeGateway, item, received, snap, upd, wire

# -- pure helpers ---------------------------------------------------------------------


def test_backoff_is_full_jitter_within_the_capped_window() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(10.0, 0.2 * 2**attempt)
        delays = [backoff_delay(attempt, 0.2, 10.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling / 4  # full jitter reaches down towards zero
    assert 0 <= backoff_delay(10_000, 0.2, 10.0, rng) <= 10.0  # no overflow


def test_build_url() -> None:
    assert build_url("ws://h:1/", ROOM) == "ws://h:1/ws/room-1?role=viewer"
    assert build_url("ws://h:1", ROOM, role="host", token="a b&c") == (
        "ws://h:1/ws/room-1?role=host&token=a+b%26c"
    )
    with pytest.raises(ValueError, match="room"):
        build_url("ws://h:1", "bad room")
    with pytest.raises(ValueError, match="role"):
        build_url("ws://h:1", ROOM, role="admin")  # type: ignore[arg-type]


def test_permanent_codes() -> None:
    # docs/protocol.md §9: "do not retry (unchanged)".
    assert {1009, 4400, 4404, 4401, 4403} == set(PERMANENT_CLOSE_CODES)
    assert CloseCode.SLOW_CLIENT not in PERMANENT_CLOSE_CODES


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 5, 20, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 12 ") == 12.0
    assert retry_after_seconds("Wed, 20 May 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Wed, 20 May 2026 11:59:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds("999999") == MAX_RETRY_AFTER
    for junk in (None, "", "-3", "1.5", "soon", "Wed, 20 May 2026 12:00:30"):
        assert retry_after_seconds(junk, now) is None, junk


def test_client_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="room"):
        StockClient("ws://127.0.0.1:1", "../etc")
    with pytest.raises(ValueError, match="URI"):
        StockClient("http://127.0.0.1:1", ROOM)


# -- StockClient against a scripted server --------------------------------------------


async def next_event(client: StockClient) -> Any:
    return await asyncio.wait_for(anext(client), WAIT)


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as gateway:
        yield gateway


def make_client(gw: FakeGateway, **kwargs: Any) -> StockClient:
    kwargs.setdefault("backoff_initial", 0.005)
    kwargs.setdefault("backoff_max", 0.02)
    return StockClient(gw.url, ROOM, **kwargs)


async def test_snapshot_then_updates_as_events(gw: FakeGateway) -> None:
    async with make_client(gw) as c:
        ws = await gw.accept()
        assert gw.paths == ["/ws/room-1?role=viewer"]
        await c.wait_for(lambda c: c.connected)
        await ws.send(wire(snap(1, [item("a", 10, 1), item("b", 5, 1)])))
        event = await next_event(c)
        assert isinstance(event, Snapshot)
        assert (event.seq, event.ts, len(event.items)) == (1, 2_000, 2)
        sent = now_ms()
        await ws.send(wire(upd(2, [item("a", 9, 2, ts=sent), item("b", 5, 1)])))
        event = await next_event(c)
        assert isinstance(event, Update)
        assert (event.seq, event.items, event.stale) == (2, [item("a", 9, 2, ts=sent)], 1)
        assert event.latencies_ms == {"a": event.received_ms - sent}
        assert c.items == {"a": item("a", 9, 2, ts=sent), "b": item("b", 5, 1)}
        assert c.stale_items == 1
        assert c.stats()["snapshots"] == 1


async def test_role_and_token_reach_the_server(gw: FakeGateway) -> None:
    async with make_client(gw, role="host", token="s3cret"):
        await gw.accept()
    assert gw.paths == ["/ws/room-1?role=host&token=s3cret"]


async def test_gap_sends_resync_and_the_snapshot_repairs_state(gw: FakeGateway) -> None:
    async with make_client(gw) as c:
        ws = await gw.accept()
        await ws.send(wire(snap(1, [item("a", 10, 1), item("b", 5, 1)])))
        await ws.send(wire(upd(2, [item("a", 9, 2)])))
        await ws.send(wire(upd(5, [item("b", 4, 3)])))  # 3 and 4 were lost
        assert await received(ws) == {"t": "resync"}
        assert c.items["b"]["qty"] == 4  # applied before the resync went out
        assert (c.gaps, c.resyncs_sent) == (1, 1)
        await ws.send(wire(upd(9, [])))  # another gap while waiting: no second request
        await ws.send(wire(snap(9, [item("a", 8, 3), item("b", 4, 3), item("c", 1, 1)])))
        await c.wait_for(lambda c: c.snapshots == 2)
        assert (c.gaps, c.resyncs_sent) == (2, 1)
        assert set(c.items) == {"a", "b", "c"}
        await ws.send(wire(upd(10, [item("c", 0, 2, st="out")])))
        await c.wait_for(lambda c: c.items["c"]["st"] == "out")


def _close_with(code: int) -> Callable[[ServerConnection], Awaitable[None]]:
    async def close(ws: ServerConnection) -> None:
        if code == 1006:
            ws.transport.abort()  # no close frame at all: a dropped TCP connection
        else:
            await ws.close(code, "bye")
    return close


@pytest.mark.parametrize("code", [1012, 4408, 1011, 1001, 1000, 1006])
async def test_transient_closes_reconnect_and_resync(gw: FakeGateway, code: int) -> None:
    async with make_client(gw) as c:
        ws = await gw.accept()
        await ws.send(wire(snap(50, [item("a", 10, 7), item("b", 2, 7)])))
        await c.wait_for(lambda c: c.snapshots == 1)
        await _close_with(code)(ws)
        ws = await gw.accept()
        await c.wait_for(lambda c: c.connected and c.reconnects == 1)
        assert c.last_close_code == code
        assert c.items["a"]["qty"] == 10  # the old state stays visible meanwhile
        # The restarted gateway reloaded state: lower sequence and versions win.
        await ws.send(wire(snap(1, [item("a", 3, 1)])))
        await c.wait_for(lambda c: c.snapshots == 2)
        assert c.items == {"a": item("a", 3, 1)}
        await ws.send(wire(upd(2, [item("a", 2, 2)])))
        await c.wait_for(lambda c: c.items["a"]["qty"] == 2)
        assert c.gaps == 0
        assert c.error is None


@pytest.mark.parametrize("code", sorted(PERMANENT_CLOSE_CODES))
async def test_permanent_close_stops_and_reports(gw: FakeGateway, code: int) -> None:
    async with make_client(gw) as c:
        ws = await gw.accept()
        await ws.close(code, "refused")
        with pytest.raises(PermanentError) as info:
            await c.wait_closed()
        assert (info.value.code, info.value.reason) == (code, "refused")
        assert str(code) in str(info.value)
        assert c.stopped
        assert not c.connected
        assert c.error is info.value
        assert c.last_close_code == code
        with pytest.raises(PermanentError):
            await next_event(c)
        with pytest.raises(PermanentError):
            await c.wait_for(lambda c: c.snapshots > 0, WAIT)
    # The client task is over, so it cannot have tried again.
    assert len(gw.paths) == 1
    assert gw.pending() == 0


async def test_a_gateway_frame_over_max_frame_bytes_stops_the_client(gw: FakeGateway) -> None:
    # The client closes with 1009 itself; the same snapshot would be too big again.
    async with make_client(gw, max_frame_bytes=1024) as c:
        ws = await gw.accept()
        await ws.send(wire(snap(1, [item(f"sku-{i}", i, 1) for i in range(100)])))
        with pytest.raises(PermanentError) as info:
            await asyncio.wait_for(c.wait_closed(), WAIT)
        assert info.value.code == 1009
        assert "max_frame_bytes" in info.value.reason
    assert len(gw.paths) == 1


async def test_backoff_resets_after_a_connection_that_delivered_a_snapshot(
    gw: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    def record(attempt: int, initial: float, maximum: float, rng: object = None) -> float:
        attempts.append(attempt)
        return 0.0

    monkeypatch.setattr(client_mod, "backoff_delay", record)
    async with make_client(gw) as c:
        for _ in range(2):
            await (await gw.accept()).close(1011)
        ws = await gw.accept()
        await ws.send(wire(snap(1, [])))
        await c.wait_for(lambda c: c.snapshots == 1)
        await ws.close(1012)
        ws = await gw.accept()
        await ws.send(wire(snap(1, [])))
        await c.wait_for(lambda c: c.snapshots == 2)
        assert c.reconnects == 3
    assert attempts == [0, 1, 0]


async def test_retries_while_the_gateway_is_down_then_connects() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with StockClient(f"ws://127.0.0.1:{port}", ROOM, backoff_initial=0.001,
                           backoff_max=0.01) as c:
        await c.wait_for(lambda c: c.connect_failures >= 3)
        assert not c.connected
        assert not c.stopped
        async with FakeGateway(port) as gw:
            ws = await gw.accept()
            await ws.send(wire(snap(1, [item("a", 1, 1)])))
            await c.wait_for(lambda c: "a" in c.items)
            await c.close()


async def test_callbacks_sync_and_async_and_failing(gw: FakeGateway) -> None:
    snapshots: list[Snapshot] = []
    updates: list[Update] = []

    async def on_update(event: Update) -> None:
        await asyncio.sleep(0)
        updates.append(event)
        if event.seq == 2:
            raise RuntimeError("UI bug")  # must not take the subscription down

    async with make_client(gw, on_snapshot=snapshots.append, on_update=on_update) as c:
        ws = await gw.accept()
        await ws.send(wire(snap(1, [item("a", 3, 1)])))
        await ws.send(wire(upd(2, [item("a", 2, 2)])))
        await ws.send(wire(upd(3, [item("a", 1, 3)])))
        await c.wait_for(lambda c: len(updates) == 2)
    assert [e.seq for e in snapshots] == [1]
    assert [e.seq for e in updates] == [2, 3]
    assert c.items["a"]["qty"] == 1


async def test_slow_consumer_loses_oldest_events_never_state(gw: FakeGateway) -> None:
    async with make_client(gw, queue_size=2) as c:
        ws = await gw.accept()
        await ws.send(wire(snap(1, [item("a", 10, 1)])))
        for seq in range(2, 6):
            await ws.send(wire(upd(seq, [item("a", 10 - seq, seq)])))
        await c.wait_for(lambda c: c.view.seq == 5)
        events = c.drain()
        assert [e.seq for e in events] == [4, 5]
        assert c.dropped_events == 3
        assert c.items["a"]["qty"] == 5
        assert c.drain() == []


async def test_non_protocol_frames_are_ignored(gw: FakeGateway) -> None:
    async with make_client(gw) as c:
        ws = await gw.accept()
        await ws.send(wire(snap(1, [item("a", 10, 1)])))
        await ws.send("text is not the protocol")
        await ws.send(b"\xc1 not msgpack")
        await ws.send(wire({"t": "pong", "id": 1}))
        await ws.send(wire({"t": "announce", "msg": "from the future"}))
        await ws.send(wire(upd(2, [item("a", 9, 2)])))
        await c.wait_for(lambda c: c.view.seq == 2)
        assert c.items["a"]["qty"] == 9
        assert c.bad_frames == 2
        assert c.view.ignored_frames == 1
        assert c.connected


async def test_close_is_clean_and_ends_iteration(gw: FakeGateway) -> None:
    c = make_client(gw)
    async with c:
        ws = await gw.accept()
        await ws.send(wire(snap(1, [])))
        await next_event(c)
        await c.close()
        await asyncio.wait_for(ws.wait_closed(), WAIT)
        assert ws.close_code == 1000
        with pytest.raises(StopAsyncIteration):
            await next_event(c)
        with pytest.raises(StopAsyncIteration):
            await next_event(c)
        with pytest.raises(ClientClosed):
            await c.wait_for(lambda c: c.snapshots > 1)
        await c.wait_closed()  # no error to report
    await c.close()  # idempotent
    assert c.stopped
    assert not c.connected


async def test_wait_for_times_out(gw: FakeGateway) -> None:
    async with make_client(gw) as c:
        await gw.accept()
        with pytest.raises(TimeoutError):
            await c.wait_for(lambda c: c.snapshots > 0, 0.01)


async def test_iterating_requires_start() -> None:
    c = StockClient("ws://127.0.0.1:1", ROOM)
    with pytest.raises(RuntimeError):
        await anext(c)
    await c.close()
    with pytest.raises(StopAsyncIteration):
        await anext(c)


async def test_close_from_inside_a_callback(gw: FakeGateway) -> None:
    async def on_snapshot(event: Snapshot) -> None:
        await c.close()

    c = make_client(gw, on_snapshot=on_snapshot)
    async with c:
        ws = await gw.accept()
        await ws.send(wire(snap(1, [])))
        await asyncio.wait_for(c.wait_closed(), WAIT)
        assert c.stopped
        assert c.error is None
        assert c.connects == 1
