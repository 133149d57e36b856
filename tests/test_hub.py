"""The hub with the in-process broker and fake clients: no sockets, a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from gateway.brokers.base import BrokerUnavailable
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
        self.offers = 0

    def offer(self, frame: bytes, limit: int) -> bool:
        self.offers += 1
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
    clock.now += 0.05  # past the urgent gap
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
    clock.now += 0.02
    hub.on_message("r", rec("x", 0, 3, initial=100))  # sold out: at once, carrying both
    assert a.frames[-1]["items"] == [{"sku": "x", "qty": 0, "st": "out", "ver": 3, "ts": 1}]
    clock.now += 0.03
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
    assert slow.offers == 2  # the snapshot, the refused update; then not asked again
    slow.backlog = 0
    hub.sweep()
    assert slow.frames[-1]["t"] == "snapshot"
    assert slow.frames[-1]["items"][0]["ver"] == 2
    assert slow.lagging_since is None
    assert not hub.lagging
    clock.now += 1
    hub.on_message("r", rec("x", 8, 3))  # and increments flow again
    assert slow.frames[-1]["t"] == "update"
    assert slow.frames[-1]["items"][0]["ver"] == 3
    assert fast.frames[-1] == slow.frames[-1]


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


# -- urgent spacing ------------------------------------------------------------------


async def test_urgent_changes_right_after_a_flush_wait_for_the_urgent_gap(hub: Hub, clock: Clock) -> None:
    a = FakeClient("r")
    await joined(hub, a)
    hub.on_message("r", rec("x", 1, 1, initial=100))  # new SKU: at once
    assert len(a.frames) == 2
    for ver in range(2, 40):  # flickers between sold out and 1 left, within a millisecond
        hub.on_message("r", rec("x", ver % 2, ver, initial=100))
    assert len(a.frames) == 2  # held for the urgent gap (20 ms), not one frame each
    room = hub.rooms["r"]
    assert room.timer is not None
    for _ in range(100):
        if len(a.frames) == 3:
            break
        await asyncio.sleep(0.01)
    assert [(i["qty"], i["ver"]) for i in a.frames[-1]["items"]] == [(1, 39)]
    assert len(a.frames) == 3


async def test_an_urgent_change_reschedules_a_later_trailing_flush(clock: Clock) -> None:
    hub = Hub(MemoryBroker(), HubConfig(interval=30.0, urgent_interval=0.01, sweep_interval=3600),
              clock=clock)
    await hub.start()
    try:
        a = FakeClient("r")
        await joined(hub, a)
        hub.on_message("r", rec("x", 50, 1, initial=100))  # at once
        hub.on_message("r", rec("x", 49, 2, initial=100))  # same tier: waits up to 30 s
        room = hub.rooms["r"]
        assert room.timer is not None
        assert room.pacer.deadline == clock.now + 30.0
        hub.on_message("r", rec("x", 0, 3, initial=100))  # sold out: 10 ms, not 30 s
        assert room.pacer.deadline == clock.now + 0.01
        for _ in range(200):
            if a.frames[-1]["items"][0]["ver"] == 3:
                break
            await asyncio.sleep(0.01)
        assert a.frames[-1]["items"] == [{"sku": "x", "qty": 0, "st": "out", "ver": 3, "ts": 1}]
    finally:
        await hub.stop()


# -- loading: retries, epochs, races -------------------------------------------------


class FlakyBroker(CountingBroker):
    """Fails the first ``failures`` loads, as a transient WRONGTYPE or timeout would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def load(self, room: str) -> Stored:
        if self.failures > 0:
            self.failures -= 1
            self.loads += 1
            raise BrokerUnavailable("WRONGTYPE Operation against a key holding the wrong kind of value")
        return await super().load(room)


def fast_retries(**overrides: Any) -> HubConfig:
    options: dict[str, Any] = {"interval": 0.1, "send_buffer_limit": 1000, "room_grace": 0.05,
                               "sweep_interval": 3600, "load_retry_min": 0.001, "load_retry_max": 0.01}
    options.update(overrides)
    return HubConfig(**options)


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_a_failed_first_load_is_retried_until_it_succeeds(clock: Clock) -> None:
    broker = FlakyBroker(failures=3)
    await broker.execute("r", StockOp(OpKind.SET, "x", 5))
    hub = Hub(broker, fast_retries(), clock=clock)
    await hub.start()
    try:
        a = FakeClient("r")
        hub.join(a)
        await wait_for(lambda: a.frames)
        assert a.frames[0]["t"] == "snapshot"
        assert [(i["sku"], i["qty"]) for i in a.frames[0]["items"]] == [("x", 5)]
        assert broker.loads == 4
        assert hub.metrics.load_failures._value.get() == 3
    finally:
        await hub.stop()


async def test_a_failed_resync_is_retried_and_other_rooms_still_reload(clock: Clock) -> None:
    broker = FlakyBroker(failures=0)
    hub = Hub(broker, fast_retries(), clock=clock)
    await hub.start()
    try:
        a, b = FakeClient("a"), FakeClient("b")
        await joined(hub, a)
        await joined(hub, b)
        await broker.execute("a", StockOp(OpKind.SET, "x", 1))
        await broker.execute("b", StockOp(OpKind.SET, "y", 2))
        await asyncio.sleep(0)
        broker.failures = 1  # the first room's reload fails
        await hub.on_resync({"a", "b"})
        assert hub.metrics.load_failures._value.get() == 1
        assert b.frames[-1]["t"] == "snapshot"  # not skipped because "a" failed
        await wait_for(lambda: hub.rooms["a"].held is None)
        assert a.frames[-1]["t"] == "snapshot"
        assert [i["qty"] for i in a.frames[-1]["items"]] == [1]
    finally:
        await hub.stop()


async def test_broker_ready_gauge_follows_the_broker(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    assert hub.metrics.broker_ready._value.get() == 1
    hub.on_disconnect()
    assert hub.metrics.broker_ready._value.get() == 0
    broker._handler = None  # not ready: a resync must not claim it is
    await hub.on_resync(set())
    assert hub.metrics.broker_ready._value.get() == 0
    broker._handler = hub
    await hub.on_resync(set())
    assert hub.metrics.broker_ready._value.get() == 1


async def test_a_flush_without_a_disconnect_is_noticed_from_the_records_epoch(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    viewer, host = FakeClient("r"), FakeClient("r", "host")
    await broker.execute("r", StockOp(OpKind.SET, "x", 100))
    await joined(hub, viewer, host)
    old_epoch = hub.rooms["r"].state.epoch
    for _ in range(5):
        await broker.execute("r", StockOp(OpKind.ADJUST, "x", -1))
    await wait_for(lambda: viewer.frames[-1]["items"][0]["ver"] == 6)  # merged, after the interval
    loads = broker.loads
    broker.wipe()  # FLUSHALL: the connection (and subscription) stays
    await broker.execute("r", StockOp(OpKind.SET, "x", 42))  # re-seeded at version 1
    await broker.execute("r", StockOp(OpKind.SET, "y", 7))
    await wait_for(lambda: viewer.frames[-1]["t"] == "snapshot" and len(viewer.frames[-1]["items"]) == 2)
    for client in (viewer, host):
        snap = client.frames[-1]
        assert snap["epoch"] == (await broker.load("r")).epoch != old_epoch
        assert {i["sku"]: (i["qty"], i["ver"]) for i in snap["items"]} == {"x": (42, 1), "y": (7, 1)}
    assert broker.loads > loads
    await broker.execute("r", StockOp(OpKind.ADJUST, "x", -2))
    await wait_for(lambda: viewer.frames[-1]["t"] == "update")
    assert viewer.frames[-1]["items"][0]["qty"] == 40
    late = FakeClient("r")
    hub.join(late)
    assert {i["sku"]: i["qty"] for i in late.frames[0]["items"]} == {"x": 40, "y": 7}


async def test_records_of_a_past_epoch_are_discarded_without_reloading(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    a = FakeClient("r")
    await broker.execute("r", StockOp(OpKind.SET, "x", 100))
    await joined(hub, a)
    old_epoch = hub.rooms["r"].state.epoch
    broker.wipe()
    await broker.execute("r", StockOp(OpKind.SET, "x", 3))
    await wait_for(lambda: hub.rooms["r"].state.epoch != old_epoch and hub.rooms["r"].held is None)
    loads, frames = broker.loads, len(a.frames)
    hub.on_message("r", rec("x", 99, 50, ep=old_epoch))  # delivered late, from before the flush
    assert hub.rooms["r"].held is None
    assert broker.loads == loads
    assert len(a.frames) == frames
    assert hub.rooms["r"].state.items["x"].qty == 3


async def test_a_room_loaded_before_its_first_write_learns_the_epoch(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    a = FakeClient("fresh")
    await joined(hub, a)
    assert a.frames[0]["epoch"] == ""
    await broker.execute("fresh", StockOp(OpKind.SET, "x", 9))
    epoch = (await broker.load("fresh")).epoch
    await wait_for(lambda: hub.rooms["fresh"].state.epoch == epoch and hub.rooms["fresh"].held is None)
    snap = a.frames[-1]
    assert snap["t"] == "snapshot"
    assert snap["epoch"] == epoch
    assert [(i["sku"], i["qty"]) for i in snap["items"]] == [("x", 9)]
    late = FakeClient("fresh")
    hub.join(late)
    assert late.frames[0]["epoch"] == epoch


async def test_an_epoch_change_during_the_read_reads_again(hub: Hub) -> None:
    broker = hub.broker
    assert isinstance(broker, CountingBroker)
    await broker.execute("r", StockOp(OpKind.SET, "x", 100))
    original = broker.load
    calls = 0

    async def flushed_while_reading(room: str) -> Stored:
        nonlocal calls
        calls += 1
        snapshot = await original(room)
        if calls == 1:  # Redis starts over right after answering
            broker.wipe()
            await broker.execute(room, StockOp(OpKind.SET, "x", 5))
            await asyncio.sleep(0)  # its record arrives while this read is in hand
        return snapshot

    broker.load = flushed_while_reading  # type: ignore[method-assign]
    a = FakeClient("r")
    hub.join(a)
    await wait_for(lambda: calls == 2 and hub.rooms["r"].held is None)
    assert a.frames[-1]["t"] == "snapshot"
    assert [(i["qty"], i["ver"]) for i in a.frames[-1]["items"]] == [(5, 1)]
    assert a.frames[-1]["epoch"] == hub.rooms["r"].state.epoch == (await original("r")).epoch


class GatedBroker(CountingBroker):
    """Subscribes only when the test opens the gate: a slow SSUBSCRIBE confirmation."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gated = 1  # how many subscribes wait for the gate

    async def subscribe(self, room: str) -> None:
        if self.gated:
            self.gated -= 1
            await self.gate.wait()
        await super().subscribe(room)


async def test_a_room_dropped_while_subscribing_leaves_no_subscription(clock: Clock) -> None:
    broker = GatedBroker()
    hub = Hub(broker, fast_retries(room_grace=0.01), clock=clock)
    await hub.start()
    try:
        a = FakeClient("r")
        hub.join(a)
        hub.leave(a)
        await wait_for(lambda: "r" not in hub.rooms)  # grace expired while subscribing
        assert broker.unsubscribed == ["r"]  # went out before the subscribe landed
        broker.gate.set()
        await wait_for(lambda: len(broker.unsubscribed) == 2)
        assert "r" not in broker._subscribed
        assert not hub._unsubscribing
    finally:
        await hub.stop()


async def test_a_room_rejoined_while_the_old_one_subscribes_stays_subscribed(clock: Clock) -> None:
    broker = GatedBroker()
    hub = Hub(broker, fast_retries(room_grace=0.01), clock=clock)
    await hub.start()
    try:
        a = FakeClient("r")
        hub.join(a)
        hub.leave(a)
        await wait_for(lambda: "r" not in hub.rooms)
        b = FakeClient("r")
        hub.join(b)  # a new room of the same name, loading on its own
        await wait_for(lambda: b.frames)
        broker.gate.set()  # the old room's subscribe lands only now
        await asyncio.sleep(0.05)
        assert "r" in broker._subscribed
        await broker.execute("r", StockOp(OpKind.SET, "x", 1))
        await wait_for(lambda: [i["sku"] for i in b.frames[-1]["items"]] == ["x"])
    finally:
        await hub.stop()


# -- writes and viewer counts ---------------------------------------------------------


async def test_host_stats_go_through_the_send_buffer_bound(hub: Hub) -> None:
    host = FakeClient("r", "host")
    host.backlog = 5000  # over the bound from the start
    await joined(hub, host)
    assert host.wire == []  # neither the snapshot nor the stats frame that follows it
    assert hub.lagging == {host}
    host.backlog = 0
    hub.sweep()
    assert [f["t"] for f in host.decoded()] == ["snapshot", "stats"]


class PartlyDownBroker(CountingBroker):
    async def report_viewers(self, room: str, node: str, count: int, ttl: float) -> int:
        if room == "down":
            raise BrokerUnavailable("slot owner unreachable")
        return count + 100  # viewers on other nodes


async def test_viewer_reports_continue_after_a_failed_room(clock: Clock) -> None:
    hub = Hub(PartlyDownBroker(), fast_retries(), clock=clock)
    await hub.start()
    try:
        for name in ("down", "up"):
            await joined(hub, FakeClient(name))
        hub.rooms["down"].viewers_total = 55
        await hub.report_viewers()
        assert hub.rooms["up"].viewers_total == 101
        assert hub.rooms["down"].viewers_total == 0
        assert hub.viewers(hub.rooms["down"]) == 1  # this node's own, until a report lands
    finally:
        await hub.stop()


async def test_a_hub_behind_on_reading_sends_less_often_and_recovers(clock: Clock) -> None:
    wall = [1_000_000]
    h = Hub(MemoryBroker(), HubConfig(interval=0.1, sweep_interval=3600, max_stretch=8.0), clock=clock,
            wall_ms=lambda: wall[0])
    await h.start()
    try:
        a = FakeClient("r")
        await joined(h, a)
        room = h.rooms["r"]

        def arrive(ver: int, age_ms: int) -> None:
            h.on_message("r", encode_record(StockRecord(sku="x", qty=1000 - ver, ver=ver,
                                                        ts=wall[0] - age_ms)))

        ver = 0
        for tick in range(10):  # 5 s of records that arrive ever later
            for _ in range(10):
                ver += 1
                arrive(ver, 2 + tick * 200)
                clock.now += 0.05
                wall[0] += 50
            h.pace()
        assert room.pacer.stretch > 4
        assert h.metrics.interval_stretch._value.get() == room.pacer.stretch
        assert h.metrics.ingest_lag._value.get() > 1.0
        late = FakeClient("r")
        h.join(late)
        assert h.rooms["r"].pacer.stretch == room.pacer.stretch  # the room is shared, not reset
        # While stretched, a burst waits a stretched interval, and the last value still goes out.
        room.pacer.flushed(clock.now)
        sent = len(a.frames)
        ver += 1
        arrive(ver, 2)
        assert room.timer is not None
        assert len(a.frames) == sent
        clock.now += 0.1 * room.pacer.stretch
        h.flush(room)
        assert a.frames[-1]["items"][0]["ver"] == ver
        for _ in range(60):  # caught up: fresh records for 30 s
            ver += 1
            arrive(ver, 2)
            clock.now += 0.5
            wall[0] += 500
            h.pace()
        assert room.pacer.stretch == 1.0
        assert h.metrics.interval_stretch._value.get() == 1.0
    finally:
        await h.stop()
