"""The Redis broker across Redis outages: resubscribe, then resync."""

from __future__ import annotations

import pytest

from gateway.brokers.base import BrokerUnavailable
from gateway.brokers.redis import RedisBroker
from gateway.stock import OpKind, StockOp
from tests.brokers.helpers import Recorder
from tests.conftest import RedisServer


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
