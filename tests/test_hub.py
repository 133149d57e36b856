"""The hub with the in-process broker and fake clients: no sockets, a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from gateway.brokers.memory import MemoryBroker
from gateway.hub import Hub, HubConfig
from gateway.protocol import Audience, CloseCode, StockRecord, Stored, encode_record
from gateway.stock import OpKind, StockOp


class FakeClient:
    def __init__(self, room: str, audience: Audience = "viewer") -> None:
        self.room = room
        self.audience: Audience = audience
        self.lagging_since: float | None = None
        self.wire: list[bytes] = []
        self.backlog = 0
        self.closed: tuple[int, str] | None = None

    def write(self, frame: bytes) -> None:
        self.wire.append(frame)

    def offer(self, frame: bytes, limit: int) -> bool:
        if self.backlog > limit:
            return False
        self.wire.append(frame)
        return True

    def buffered(self) -> int:
        return self.backlog

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def decoded(self) -> list[dict[str, Any]]:
        out = []
        for frame in self.wire:
            assert frame[0] == 0x82  # FIN + binary
            n = frame[1]
            offset = 2 if n < 126 else 4 if n == 126 else 10
            out.append(msgpack.unpackb(frame[offset:]))
        return out

    @property
    def frames(self) -> list[dict[str, Any]]:
        """Snapshots and updates: the versioned state frames."""
        return [f for f in self.decoded() if f["t"] != "stats"]

    @property
    def stats(self) -> list[dict[str, Any]]:
        return [f for f in self.decoded() if f["t"] == "stats"]


class CountingBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.unsubscribed: list[str] = []

    async def load(self, room: str) -> Stored:
        self.loads += 1
        return await super().load(room)

    async def unsubscribe(self, room: str) -> None:
        self.unsubscribed.append(room)
        await super().unsubscribe(room)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def hub(clock: Clock) -> AsyncIterator[Hub]:
    h = Hub(CountingBroker(), HubConfig(interval=0.1, send_buffer_limit=1000,
                                        slow_client_timeout=5.0, room_grace=0.05,
                                        sweep_interval=3600), clock=clock)
    await h.start()
    yield h
    await h.stop()


def rec(sku: str, qty: int, ver: int, **extra: Any) -> bytes:
    return encode_record(StockRecord(sku=sku, qty=qty, ver=ver, ts=1, **extra))


async def joined(hub: Hub, *clients: FakeClient) -> None:
    for c in clients:
        hub.join(c)
    room = hub.rooms[clients[0].room]
    for _ in range(100):
        if room.loaded:
            return
        await asyncio.sleep(0)
    raise AssertionError("room did not load")


async def test_first_join_loads_from_broker_later_joins_from_memory(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    await broker.execute("r", StockOp(OpKind.SET, "a", 5, {"initial": 10, "name": "A"}))
    first, host = FakeClient("r"), FakeClient("r", "host")
    await joined(hub, first, host)
    late = FakeClient("r")
    hub.join(late)
    assert broker.loads == 1
    snap = late.frames[0]
    assert snap["t"] == "snapshot"
    ts = snap["items"][0]["ts"]
    assert snap["items"] == [{"sku": "a", "qty": 5, "st": "ok", "ver": 1, "ts": ts, "name": "A"}]
    assert first.wire[0] is late.wire[0]  # the same encoded snapshot object
    host_item = host.frames[0]["items"][0]
    assert (host_item["name"], host_item["initial"], host_item["alert"]) == ("A", 10, "ok")


async def test_quiet_update_goes_out_at_once_burst_is_merged(hub: Hub, clock: Clock) -> None:
    a, b = FakeClient("r"), FakeClient("r")
    await joined(hub, a, b)
    hub.on_message("r", rec("x", 100, 1, initial=100))  # new SKU: urgent
    hub.on_message("r", rec("y", 50, 1))  # new SKU: urgent
    clock.now += 1
    hub.on_message("r", rec("x", 99, 2, initial=100))  # after a quiet spell: at once
    assert [f["items"][0]["ver"] for f in a.frames[1:]] == [1, 1, 2]
    for ver in range(3, 40):
        clock.now += 0.001
        hub.on_message("r", rec("x", 100 - ver, ver, initial=100))
    hub.on_message("r", rec("x", 90, 5, initial=100))  # late duplicate: discarded
    room = hub.rooms["r"]
    assert room.timer is not None  # one trailing flush scheduled, nothing sent yet
    assert len(a.frames) == 4
    clock.now += 0.1
    hub.flush(room)
    merged = a.frames[-1]
    assert merged["t"] == "update"
    assert merged["items"] == [{"sku": "x", "qty": 61, "st": "ok", "ver": 39, "ts": 1}]
    assert [f["seq"] for f in a.frames] == [1, 2, 3, 4, 5]
    assert a.wire[-1] is b.wire[-1]
    assert hub.metrics.updates_discarded._value.get() == 1


async def test_sell_out_skips_the_interval(hub: Hub, clock: Clock) -> None:
    a = FakeClient("r")
    await joined(hub, a)
    hub.on_message("r", rec("x", 10, 1, initial=100))
    clock.now += 0.01
    hub.on_message("r", rec("x", 9, 2, initial=100))  # same tier inside the interval: waits
    clock.now += 0.01
    hub.on_message("r", rec("x", 0, 3, initial=100))  # sold out: at once, carrying both
    assert a.frames[-1]["items"] == [{"sku": "x", "qty": 0, "st": "out", "ver": 3, "ts": 1}]
    clock.now += 0.01
    hub.on_message("r", rec("x", 30, 4, initial=100))  # back in stock: at once
    assert a.frames[-1]["items"][0]["st"] == "ok"


async def test_viewers_never_get_host_fields(hub: Hub) -> None:
    viewer, host = FakeClient("r"), FakeClient("r", "host")
    await joined(hub, viewer, host)
    hub.on_message("r", rec("x", 3, 1, initial=100, reserve=9, platforms={"douyin": 3}, name="N"))
    assert set(viewer.frames[-1]["items"][0]) == {"sku", "qty", "st", "ver", "ts"}
    item = host.frames[-1]["items"][0]
    got = (item["reserve"], item["platforms"], item["alert"], item["st"])
    assert got == (9, {"douyin": 3}, "critical", "low")


async def test_slow_client_is_held_back_then_resynced(hub: Hub, clock: Clock) -> None:
    slow, fast = FakeClient("r"), FakeClient("r")
    await joined(hub, slow, fast)
    slow.backlog = 5000
    hub.on_message("r", rec("x", 10, 1))
    clock.now += 1
    hub.on_message("r", rec("x", 9, 2))
    assert len(slow.frames) == 1  # only the snapshot it got on join
    assert len(fast.frames) == 3
    assert hub.lagging == {slow}
    slow.backlog = 0
    hub.sweep()
    assert slow.frames[-1]["t"] == "snapshot"
    assert slow.frames[-1]["items"][0]["ver"] == 2
    assert slow.lagging_since is None
    assert not hub.lagging


async def test_stuck_client_is_closed_after_the_timeout(hub: Hub, clock: Clock) -> None:
    stuck, fine = FakeClient("r"), FakeClient("r")
    await joined(hub, stuck, fine)
    stuck.backlog = 5000
    hub.on_message("r", rec("x", 10, 1))
    clock.now += 4.9
    hub.sweep()
    assert stuck.closed is None
    clock.now += 0.2
    hub.sweep()
    assert stuck.closed is not None
    assert stuck.closed[0] == CloseCode.SLOW_CLIENT
    assert fine.closed is None


async def test_malformed_records_are_dropped_and_counted(hub: Hub) -> None:
    a = FakeClient("r")
    await joined(hub, a)
    hub.on_message("r", b"\x93garbage")
    hub.on_message("r", msgpack.packb({"sku": "x", "qty": -1, "ver": 1, "ts": 1}))
    hub.on_message("r", b"x" * 10_000)
    hub.on_message("r", rec("x", 1, 1))
    dropped = hub.metrics.messages_dropped
    assert dropped.labels("undecodable")._value.get() == 1
    assert dropped.labels("bad_field")._value.get() == 1
    assert dropped.labels("oversized")._value.get() == 1
    assert a.frames[-1]["items"][0]["qty"] == 1


async def test_room_unsubscribes_after_grace_unless_rejoined(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    a = FakeClient("r")
    await joined(hub, a)
    hub.leave(a)
    b = FakeClient("r")
    hub.join(b)  # back within the grace period: same room, no reload
    await asyncio.sleep(0.1)
    assert "r" in hub.rooms
    assert broker.loads == 1
    hub.leave(b)
    await asyncio.sleep(0.1)
    assert "r" not in hub.rooms
    assert broker.unsubscribed == ["r"]


async def test_resync_replaces_state_and_pushes_a_snapshot(hub: Hub, clock: Clock) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    a = FakeClient("r", "host")
    await joined(hub, a)
    hub.on_message("r", rec("x", 10, 40))
    hub.on_message("r", rec("gone", 1, 3))
    # Redis lost everything and a stock service re-seeded it at version 1.
    broker.wipe()
    await broker.execute("r", StockOp(OpKind.SET, "x", 7))
    await hub.on_resync({"r"})
    snap = a.frames[-1]
    assert snap["t"] == "snapshot"
    assert [(i["sku"], i["qty"], i["ver"]) for i in snap["items"]] == [("x", 7, 1)]
    clock.now += 1
    hub.on_message("r", rec("x", 6, 2))
    assert a.frames[-1]["t"] == "update"
    assert a.frames[-1]["items"][0]["qty"] == 6


async def test_records_arriving_during_a_load_are_kept(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    await broker.execute("r", StockOp(OpKind.SET, "x", 10))
    room_seen: list[bool] = []

    original = broker.load

    async def slow_load(room: str) -> Stored:
        snapshot = await original(room)
        # Published after Redis answered the snapshot, delivered before we used it.
        hub.on_message(room, rec("x", 9, 2))
        hub.on_message(room, rec("x", 10, 1))  # already in the snapshot: stale
        room_seen.append(True)
        return snapshot

    broker.load = slow_load  # type: ignore[method-assign]
    a = FakeClient("r")
    await joined(hub, a)
    assert room_seen == [True]
    assert a.frames[0]["items"][0]["qty"] == 9


async def test_hosts_get_shared_stats_frames_with_velocity(hub: Hub) -> None:
    host, other_host, viewer = FakeClient("r", "host"), FakeClient("r", "host"), FakeClient("r")
    await joined(hub, host, other_host, viewer)
    assert host.stats[0]["viewers"] == 1  # sent right after the snapshot
    now = 1_800_000_000_000
    hub._wall_ms = lambda: now  # type: ignore[method-assign]
    batch = {"at": now + 60_000, "qty": 500}
    hub.on_message("r", encode_record(StockRecord("x", 1000, 1, now - 30_000, initial=1000,
                                                  batches=[batch])))
    hub.on_message("r", encode_record(StockRecord("x", 700, 2, now - 1_000, initial=1000,
                                                  batches=[batch])))
    hub.send_stats()
    stats = host.stats[-1]
    assert other_host.wire[-1] is host.wire[-1]
    # 300 units sold; the first sale was 1 s ago, so the minimum 10 s span applies.
    assert stats["skus"]["x"] == {"vel": 1800.0, "eta": 23, "next_batch": batch}
    assert not viewer.stats


async def test_a_reload_in_the_same_epoch_never_goes_back(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    await broker.execute("r", StockOp(OpKind.SET, "x", 10))
    a = FakeClient("r")
    await joined(hub, a)
    hub.on_message("r", rec("x", 4, 9))  # newer than what the store returns below
    await hub.on_resync({"r"})
    snap = a.frames[-1]
    assert snap["t"] == "snapshot"
    assert snap["epoch"] == hub.rooms["r"].state.epoch != ""
    assert [(i["qty"], i["ver"]) for i in snap["items"]] == [(4, 9)]
