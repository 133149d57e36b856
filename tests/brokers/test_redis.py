"""The Redis broker: across Redis outages (resubscribe, then resync), slot moves, viewer expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from redis.crc import key_slot

from gateway.brokers.base import BrokerUnavailable
from gateway.brokers.redis import RedisBroker
from gateway.metrics import Metrics
from gateway.protocol import channel, viewers_key
from gateway.stock import OpKind, StockOp
from tests.brokers.helpers import Recorder
from tests.conftest import RedisClusterNodes, RedisServer


async def test_reconnects_resubscribes_and_resyncs(own_redis: RedisServer) -> None:
    reconnects: list[int] = []
    broker = RedisBroker(own_redis.url, reconnect_max=0.2,
                         on_reconnect=lambda: reconnects.append(1))
    rec = Recorder()
    await broker.start(rec)
    try:
        await rec.until(lambda: broker.ready)
        await broker.subscribe("r1")
        own_redis.stop()
        await rec.until(lambda: rec.disconnects == 1)
        assert not broker.ready
        with pytest.raises(BrokerUnavailable):
            await broker.execute("r1", StockOp(OpKind.SET, "a", 1))
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe("r2")  # remembered: subscribed once Redis is back
        resyncs = rec.resyncs
        own_redis.start()
        await rec.until(lambda: rec.resyncs > resyncs, timeout=10)
        assert broker.ready
        assert reconnects == [1]
        await broker.execute("r1", StockOp(OpKind.SET, "a", 1))
        await broker.execute("r2", StockOp(OpKind.SET, "b", 2))
        await rec.until(lambda: len(rec.messages) == 2)
        assert sorted(room for room, _ in rec.messages) == ["r1", "r2"]
    finally:
        await broker.stop()


async def test_starts_while_redis_is_down(own_redis: RedisServer) -> None:
    own_redis.stop()
    broker = RedisBroker(own_redis.url, reconnect_max=0.2)
    rec = Recorder()
    await broker.start(rec)  # never raises: the gateway starts and reports not ready
    try:
        assert not broker.ready
        own_redis.start()
        await rec.until(lambda: broker.ready, timeout=10)
        assert rec.resyncs == 1
    finally:
        await broker.stop()


async def test_malformed_channel_payloads_reach_the_handler_unparsed(redis_url: str) -> None:
    """The broker passes bytes through untouched; judging them is the hub's job."""
    broker = RedisBroker(redis_url)
    got: list[bytes] = []

    class Raw(Recorder):
        def on_message(self, room: str, payload: bytes) -> None:
            got.append(payload)
            self._changed.set()

    rec = Raw()
    await broker.start(rec)
    try:
        await rec.until(lambda: broker.ready)
        await broker.subscribe("raw")
        client = broker._client
        assert client is not None
        await client.spublish("stockwire:{raw}:updates", b"\xc1not msgpack")
        await rec.until(lambda: len(got) == 1)
        assert got == [b"\xc1not msgpack"]
    finally:
        await broker.stop()


async def test_unsubscribe_then_subscribe_again_is_not_mistaken_for_a_moved_slot(redis_url: str) -> None:
    """Our own SUNSUBSCRIBE's reply can arrive after we subscribed again; it must
    not be read as Redis taking the channel away (which would reload the room)."""
    broker = RedisBroker(redis_url)
    rec = Recorder()
    await broker.start(rec)
    try:
        await rec.until(lambda: broker.ready)
        resyncs = rec.resyncs
        for _ in range(20):
            await broker.subscribe("again")
            await broker.unsubscribe("again")
        await broker.subscribe("again")
        await broker.execute("again", StockOp(OpKind.SET, "a", 1))
        await rec.until(lambda: len(rec.messages) == 1)
        assert rec.resyncs == resyncs
        assert broker.subscriptions() == {"again": broker.shard_health().popitem()[0]}
    finally:
        await broker.stop()


def _entries(server: RedisServer, room: str) -> dict[str, tuple[int, int]]:
    raw = server.client().hgetall(viewers_key(room))
    out = {}
    for node, value in raw.items():
        count, expires = value.decode().split(":")
        out[node.decode()] = (int(count), int(expires))
    return out


def _redis_ms(server: RedisServer) -> int:
    seconds, micros = server.client().time()
    return seconds * 1000 + micros // 1000


async def test_viewer_entries_expire_on_redis_time_not_the_gateways(
    redis_server: RedisServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway whose clock is an hour off neither deletes live entries of the
    others (clock ahead) nor keeps a dead node's entry (clock behind)."""
    broker = RedisBroker(redis_url)
    await broker.start(Recorder())
    real_time, real_ns = time.time, time.time_ns
    try:
        await broker.report_viewers("skew", "live", 4, ttl=30)
        before = _redis_ms(redis_server)
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
        monkeypatch.setattr(time, "time_ns", lambda: real_ns() + 3600 * 10**9)
        assert await broker.report_viewers("skew", "ahead", 1, ttl=30) == 5
        entries = _entries(redis_server, "skew")
        assert set(entries) == {"live", "ahead"}
        # Stored as "<count>:<expires ms>", the expiry in Redis server time.
        assert before + 30_000 <= entries["ahead"][1] <= _redis_ms(redis_server) + 30_000

        monkeypatch.setattr(time, "time", real_time)
        monkeypatch.setattr(time, "time_ns", real_ns)
        await broker.report_viewers("skew", "dies", 7, ttl=0.2)
        await asyncio.sleep(0.4)
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
        monkeypatch.setattr(time, "time_ns", lambda: real_ns() - 3600 * 10**9)
        assert await broker.report_viewers("skew", "behind", 2, ttl=30) == 4 + 1 + 2
        assert "dies" not in _entries(redis_server, "skew")
    finally:
        monkeypatch.undo()
        await broker.stop()


async def test_a_room_whose_slot_moved_before_it_was_subscribed_lands_on_the_new_owner(
    redis_cluster: RedisClusterNodes,
) -> None:
    """The broker's slot map is stale: SSUBSCRIBE goes to the old owner, which answers
    MOVED.  The room must end up subscribed on the new owner and be reloaded."""
    redis_cluster.flush()
    broker = RedisBroker(redis_cluster.url, cluster=True)
    rec = Recorder()
    await broker.start(rec)
    room = "stale-map"
    slot = key_slot(channel(room).encode())
    source = redis_cluster.owner(channel(room))
    target = next(n for n in redis_cluster.nodes if n is not source)
    try:
        await rec.until(lambda: broker.ready)
        redis_cluster.move_slot(slot, target)  # behind the broker's back
        resyncs = rec.resyncs
        with contextlib.suppress(BrokerUnavailable):
            await broker.subscribe(room)
        await rec.until(lambda: broker.subscriptions().get(room) == target.name, timeout=10)
        await rec.until(lambda: rec.resyncs > resyncs)
        await broker.execute(room, StockOp(OpKind.SET, "a", 3))
        await rec.until(lambda: any(r == room for r, _ in rec.messages))
        assert target.client().execute_command("PUBSUB", "SHARDNUMSUB", channel(room))[1] == 1
        assert broker.ready
        assert rec.disconnects == 0  # the old owner's connection, and its other rooms, were left alone
    finally:
        await broker.stop()
        redis_cluster.move_slot(slot, source)


async def test_slot_migration_under_a_live_room_moves_it_and_reloads_it(
    redis_cluster: RedisClusterNodes,
) -> None:
    """Resharding: the old owner drops our subscription with an unsolicited sunsubscribe."""
    redis_cluster.flush()
    states: list[tuple[str, bool | None]] = []
    broker = RedisBroker(redis_cluster.url, cluster=True,
                         on_shard_state=lambda name, up: states.append((name, up)))
    rec = Recorder()
    await broker.start(rec)
    room = "migrating"
    slot = key_slot(channel(room).encode())
    source = redis_cluster.owner(channel(room))
    target = next(n for n in redis_cluster.nodes if n is not source)
    try:
        await rec.until(lambda: broker.ready)
        await broker.subscribe(room)
        await broker.subscribe("bystander")
        await broker.execute(room, StockOp(OpKind.SET, "a", 1))
        await rec.until(lambda: len(rec.messages) == 1)
        resyncs = rec.resyncs
        redis_cluster.move_slot(slot, target)
        await rec.until(lambda: rec.resyncs > resyncs, timeout=10)
        assert broker.subscriptions()[room] == target.name
        numsub = {n.name: n.client().execute_command("PUBSUB", "SHARDNUMSUB", channel(room))[1]
                  for n in redis_cluster.nodes}
        assert numsub == {n.name: int(n is target) for n in redis_cluster.nodes}
        await broker.execute(room, StockOp(OpKind.SET, "a", 2))
        await rec.until(lambda: rec.messages[-1][1].qty == 2)
        assert broker.ready
        assert broker.shard_health() == {n.name: True for n in redis_cluster.nodes}
        assert all(up is not None for _, up in states)  # a migration drops no shard
    finally:
        await broker.stop()
        redis_cluster.move_slot(slot, source)


async def test_shard_health_reaches_the_metrics(redis_url: str) -> None:
    metrics = Metrics()
    broker = RedisBroker(redis_url, on_shard_state=metrics.shard_state)
    rec = Recorder()
    await broker.start(rec)
    try:
        await rec.until(lambda: broker.ready)
        (name,) = broker.shard_health()
        text = metrics.render().decode()
        assert f'stockwire_redis_shard_up{{shard="{name}"}} 1.0' in text
    finally:
        await broker.stop()


async def test_stop_is_bounded_when_a_shard_task_ignores_its_cancellation(redis_url: str) -> None:
    """A cancellation lost inside a library (turned into a timeout, say) must not
    keep the gateway from stopping: the broker gives up waiting on that task."""
    from gateway.brokers import shard as shard_module

    broker = RedisBroker(redis_url)
    rec = Recorder()
    await broker.start(rec)
    await rec.until(lambda: broker.ready)
    (shard,) = broker._shards.values()
    stopped = asyncio.Event()

    async def stubborn() -> None:
        while not stopped.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)

    shard._resync_task = asyncio.create_task(stubborn())
    started = time.monotonic()
    try:
        await asyncio.wait_for(broker.stop(), shard_module.STOP_TIMEOUT + 5)
        assert time.monotonic() - started >= shard_module.STOP_TIMEOUT * 0.9
        assert shard._task is not None
        assert shard._task.done()  # the reader itself did end
    finally:
        stopped.set()
        await shard._resync_task


async def test_a_shard_loop_ends_once_the_broker_is_stopping(redis_url: str) -> None:
    """The reader's loop checks the broker's flag, so it ends even if it only ever
    sees connection errors and never its cancellation."""
    broker = RedisBroker(redis_url)
    rec = Recorder()
    await broker.start(rec)
    await rec.until(lambda: broker.ready)
    (shard,) = broker._shards.values()
    broker._stopping = True
    assert shard._conn is not None
    shard._conn.close()  # the reader sees a connection error
    assert shard._task is not None
    await asyncio.wait_for(asyncio.shield(shard._task), 5)
    assert not shard.ready
    await broker.stop()
