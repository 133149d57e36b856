"""One contract, every broker: the in-process broker must behave like Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.brokers.base import Broker
from gateway.brokers.memory import MemoryBroker
from gateway.brokers.redis import RedisBroker
from gateway.protocol import decode_record
from gateway.stock import OpKind, Status, StockOp
from tests.brokers.helpers import Recorder


@pytest.fixture(params=["memory", "redis", "cluster"])
async def started(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, Recorder]]:
    if request.param == "memory":
        broker: Broker = MemoryBroker()
    elif request.param == "redis":
        broker = RedisBroker(request.getfixturevalue("redis_url"))
    else:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        broker = RedisBroker(cluster.url, cluster=True)
    recorder = Recorder()
    await broker.start(recorder)
    await recorder.until(lambda: broker.ready)
    yield broker, recorder
    await broker.stop()


def op(kind: str, sku: str, amount: int, **kw: object) -> StockOp:
    return StockOp(OpKind(kind), sku, amount, **kw)  # type: ignore[arg-type]


async def test_subscribed_room_receives_published_records(started: tuple[Broker, Recorder]) -> None:
    broker, rec = started
    await broker.subscribe("r1")
    result = await broker.execute("r1", op("set", "a", 10, fields={"name": "A", "initial": 10}))
    assert (result.status, result.qty, result.ver) == (Status.OK, 10, 1)
    await rec.until(lambda: len(rec.messages) == 1)
    room, record = rec.messages[0]
    assert room == "r1"
    assert (record.sku, record.qty, record.ver, record.name, record.initial) == ("a", 10, 1, "A", 10)
    assert record.ts > 1_600_000_000_000


async def test_unsubscribed_room_is_not_delivered(started: tuple[Broker, Recorder]) -> None:
    broker, rec = started
    await broker.subscribe("quiet")
    await broker.subscribe("loud")
    await broker.unsubscribe("quiet")
    await broker.execute("quiet", op("set", "a", 1))
    await broker.execute("loud", op("set", "b", 2))
    # Delivery is ordered, so once "loud" arrived, "quiet" would have too.
    await rec.until(lambda: any(room == "loud" for room, _ in rec.messages))
    assert [room for room, _ in rec.messages] == ["loud"]


async def test_load_returns_every_stored_record(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    for sku, qty in (("a", 5), ("b", 7), ("c", 0)):
        await broker.execute("r2", op("set", sku, qty))
    await broker.execute("r2", op("adjust", "a", -2))
    stored = await broker.load("r2")
    records = {r.sku: r for r in map(decode_record, stored.records)}
    assert {k: (r.qty, r.ver) for k, r in records.items()} == {"a": (3, 2), "b": (7, 1), "c": (0, 1)}
    empty = await broker.load("empty-room")
    assert (empty.epoch, empty.records) == ("", [])


async def test_epoch_is_set_once_by_the_first_write(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    await broker.execute("r5", op("adjust", "a", 1))  # refused: writes nothing, sets no epoch
    assert (await broker.load("r5")).epoch == ""
    await broker.execute("r5", op("set", "a", 1))
    epoch = (await broker.load("r5")).epoch
    assert epoch
    await broker.execute("r5", op("set", "b", 1))
    assert (await broker.load("r5")).epoch == epoch
    assert (await broker.load("other")).epoch != epoch


async def test_refused_operations_change_and_publish_nothing(started: tuple[Broker, Recorder]) -> None:
    broker, rec = started
    await broker.subscribe("r3")
    await broker.execute("r3", op("set", "a", 2, fields={"reserve": 5}))
    refused = [
        await broker.execute("r3", op("adjust", "a", -3)),
        await broker.execute("r3", op("adjust", "nope", -1)),
        await broker.execute("r3", op("release", "a", 6)),
        await broker.execute("r3", op("set", "a", 1, version=1)),
        await broker.execute("r3", op("set", "a", -1)),
    ]
    assert [r.status for r in refused] == [
        Status.INSUFFICIENT, Status.UNKNOWN, Status.INSUFFICIENT, Status.STALE, Status.INVALID,
    ]
    assert all((r.qty, r.ver) == (2, 1) for r in refused if r.status is not Status.UNKNOWN)
    await broker.execute("r3", op("adjust", "a", -2))
    await rec.until(lambda: len(rec.messages) == 2)
    assert [(r.qty, r.ver) for _, r in rec.messages] == [(2, 1), (0, 2)]


async def test_release_moves_reserve_into_stock(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    await broker.execute("r4", op("set", "a", 0, fields={"initial": 100, "reserve": 20}))
    result = await broker.execute("r4", op("release", "a", 15))
    assert (result.status, result.qty, result.ver) == (Status.OK, 15, 2)
    (record,) = map(decode_record, (await broker.load("r4")).records)
    assert (record.qty, record.reserve, record.initial) == (15, 5, 100)


async def test_viewer_reports_include_this_node(started: tuple[Broker, Recorder]) -> None:
    broker, _ = started
    assert await broker.report_viewers("r6", "node-a", 7, ttl=5) >= 7
    if not isinstance(broker, MemoryBroker):  # shared across nodes, expiring per node
        assert await broker.report_viewers("r6", "node-b", 3, ttl=5) == 10
        assert await broker.report_viewers("r6", "node-b", 1, ttl=5) == 8
        await broker.report_viewers("r6", "node-c", 4, ttl=0.001)
        await asyncio.sleep(0.01)
        assert await broker.report_viewers("r6", "node-b", 1, ttl=5) == 8


async def wipe(broker: Broker) -> None:
    """FLUSHALL, with the broker's connections (and subscriptions) left as they are."""
    if isinstance(broker, MemoryBroker):
        broker.wipe()
        return
    assert isinstance(broker, RedisBroker)
    client = RedisCluster.from_url(broker.url) if broker.cluster else aioredis.from_url(broker.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def test_records_carry_the_rooms_epoch(started: tuple[Broker, Recorder]) -> None:
    broker, rec = started
    await broker.subscribe("r7")
    await broker.execute("r7", op("set", "a", 3))
    await broker.execute("r7", op("adjust", "a", -1))
    await rec.until(lambda: len(rec.messages) == 2)
    stored = await broker.load("r7")
    assert stored.epoch
    assert [r.ep for _, r in rec.messages] == [stored.epoch, stored.epoch]
    assert [r.ep for r in map(decode_record, stored.records)] == [stored.epoch]


async def test_a_flushed_room_starts_a_new_epoch_that_its_records_show(
    started: tuple[Broker, Recorder],
) -> None:
    broker, rec = started
    await broker.subscribe("r8")
    for qty in (10, 9, 8):
        await broker.execute("r8", op("set", "a", qty))
    old = await broker.load("r8")
    await wipe(broker)
    assert (await broker.load("r8")).epoch == ""
    result = await broker.execute("r8", op("set", "a", 42))
    assert (result.status, result.qty, result.ver) == (Status.OK, 42, 1)  # versions started over
    await rec.until(lambda: len(rec.messages) == 4)  # still subscribed through the flush
    new = await broker.load("r8")
    assert new.epoch not in ("", old.epoch)
    room, record = rec.messages[-1]
    assert (room, record.qty, record.ver, record.ep) == ("r8", 42, 1, new.epoch)
    assert {r.ep for _, r in rec.messages[:3]} == {old.epoch}
