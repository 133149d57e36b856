"""Redis broker: sharded pub/sub, on one Redis or across a Redis Cluster.

Rooms are subscribed on demand with SSUBSCRIBE, on the connection of the
shard that owns the room's slot (a single Redis is one shard).  Each shard's
reader owns its reconnection: redis-py's own retries are off so a dropped
connection surfaces here, where it matters.  After a reconnect the shard's
rooms are subscribed again *and then* reloaded from their stored records, or
updates published while we were away would be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.brokers.base import Broker, BrokerHandler, BrokerUnavailable
from gateway.protocol import Stored, channel, epoch_key, room_of_channel, stock_key, viewers_key
from gateway.stock import LUA_SCRIPT, OpResult, Status, StockOp

log = logging.getLogger("stockwire.redis")

_CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

#: Reads a room's epoch and records in one atomic step (a script, not MULTI,
#: so it runs unchanged on a cluster: both keys share the room's hash slot).
LOAD_SCRIPT = """
return {redis.call('GET', KEYS[1]) or '', redis.call('HVALS', KEYS[2])}
"""

#: Sets this node's viewer count, drops other nodes' expired entries, returns the sum.
VIEWERS_SCRIPT = """
local now, total = tonumber(ARGV[3]), 0
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[4])))
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local count, expires = string.match(entries[i + 1], '^(%d+):(%d+)$')
  if count == nil or tonumber(expires) < now then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    total = total + tonumber(count)
  end
end
-- The key outlives the longest-lived entry, so idle rooms leave nothing behind.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return total
"""

Client = aioredis.Redis | RedisCluster


def connect(url: str, *, cluster: bool = False, **options: Any) -> Client:
    """A client that fails fast instead of retrying behind our back."""
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("socket_keepalive", True)
    if cluster:
        options.setdefault("retry", Retry(NoBackoff(), 1))
        return RedisCluster.from_url(url, **options)
    options.setdefault("retry", Retry(NoBackoff(), 0))
    return aioredis.from_url(url, **options)


class StockScript:
    """Runs ``stock.lua``: change one SKU and publish it in a single atomic step."""

    def __init__(self, client: Client) -> None:
        self._script = client.register_script(LUA_SCRIPT)

    async def __call__(self, room: str, op: StockOp) -> OpResult:
        fields = msgpack.packb(op.fields) if op.fields else b""
        reply = await self._script(
            keys=[stock_key(room), channel(room), epoch_key(room)],
            args=[
                op.kind.value,
                op.sku,
                op.amount,
                fields,
                "" if op.version is None else op.version,
                op.platform or "",
            ],
        )
        status, qty, ver, detail = reply
        return OpResult(Status(_text(status)), int(qty), int(ver), _text(detail))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Shard:
    """One pub/sub connection and the rooms whose channels it carries."""

    def __init__(self, broker: RedisBroker, name: str, client: aioredis.Redis) -> None:
        self.broker = broker
        self.name = name
        self.client = client
        self.rooms: set[str] = set()
        self.ready = False
        self._pubsub: Any = None
        self._confirm: dict[str, asyncio.Future[None]] = {}
        self._last_seen = 0.0
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"stockwire-shard-{self.name}")

    async def stop(self) -> None:
        for task in (self._task, self._resync_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close_pubsub()
        await self.client.aclose()
        self.ready = False

    async def subscribe(self, room: str) -> None:
        self.rooms.add(room)
        pubsub = self._pubsub
        if pubsub is None:
            raise BrokerUnavailable("redis is unreachable")
        name = channel(room)
        future = self._confirm.get(name)
        if future is None:
            future = self._confirm[name] = asyncio.get_running_loop().create_future()
            try:
                await pubsub.ssubscribe(name)
            except _CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(str(exc)) from exc
        try:
            await asyncio.wait_for(asyncio.shield(future), self.broker.subscribe_timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable("no subscribe confirmation") from exc

    async def unsubscribe(self, room: str) -> None:
        self.rooms.discard(room)
        name = channel(room)
        self._confirm.pop(name, None)
        if self._pubsub is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await self._pubsub.sunsubscribe(name)

    async def _run(self) -> None:
        attempt = 0
        connected_once = False
        while True:
            try:
                await self._connect()
                if connected_once:
                    self.broker.reconnected()
                connected_once = True
                attempt = 0
                await self._read()
            except asyncio.CancelledError:
                raise
            except _CONNECTION_ERRORS as exc:
                if self.ready:
                    log.warning("redis.down", extra={"fields": {"shard": self.name, "error": str(exc)}})
                else:
                    fields = {"shard": self.name, "error": repr(exc)}
                    log.debug("redis.connect_failed", extra={"fields": fields})
            self._lost()
            await self._close_pubsub()
            # Pooled command connections died with this one; drop them so the
            # reload after reconnecting starts fresh.
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect()
            await self.broker.reset_commands()
            await self.broker.topology_changed(self)
            # Exponential backoff with full jitter: a fleet of gateways that
            # lost the same Redis must not return in the same millisecond.
            delay = min(self.broker.reconnect_max, self.broker.reconnect_min * 2**attempt)
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(random.uniform(0, delay))

    async def _connect(self) -> None:
        pubsub = self.client.pubsub()
        await pubsub.ping()  # connects, or raises while Redis is down
        self._pubsub = pubsub
        self._last_seen = time.monotonic()
        names = [channel(room) for room in self.rooms]
        loop = asyncio.get_running_loop()
        self._confirm = {name: loop.create_future() for name in names}
        for name in names:  # one per command: SSUBSCRIBE refuses channels of different slots
            await pubsub.ssubscribe(name)
        self._resync_task = asyncio.create_task(self._resync(list(self._confirm.values())))

    async def _resync(self, confirmations: list[asyncio.Future[None]]) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*confirmations), self.broker.subscribe_timeout)
        except (TimeoutError, BrokerUnavailable):
            return  # the reader will notice the broken connection and retry
        self.ready = True
        log.info("redis.ready", extra={"fields": {"shard": self.name, "rooms": len(self.rooms)}})
        try:
            await self.broker.resync(set(self.rooms))
        except BrokerUnavailable:
            # A reload failed: start the whole cycle again rather than serve
            # rooms whose snapshot we could not read.
            log.warning("redis.resync_failed", extra={"fields": {"shard": self.name}})
            if self._pubsub is not None and self._pubsub.connection is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.connection.disconnect()

    async def _read(self) -> None:
        pubsub = self._pubsub
        handler = self.broker.handler
        assert pubsub is not None
        assert handler is not None
        watchdog = asyncio.create_task(self._watchdog(pubsub))
        try:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                self._last_seen = time.monotonic()
                kind = message["type"]
                if kind == "smessage":
                    room = room_of_channel(message["channel"])
                    if room is not None:
                        handler.on_message(room, message["data"])
                elif kind == "ssubscribe":
                    future = self._confirm.get(_text(message["channel"]))
                    if future is not None and not future.done():
                        future.set_result(None)
        finally:
            watchdog.cancel()

    async def _watchdog(self, pubsub: Any) -> None:
        """Ping through the pub/sub connection; a silent connection is a dead one."""
        interval = self.broker.ping_interval
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_seen > 3 * interval:
                log.warning("redis.silent", extra={"fields": {"shard": self.name}})
                with contextlib.suppress(Exception):
                    await pubsub.connection.disconnect()
                return
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await pubsub.ping()

    def _lost(self) -> None:
        was_ready = self.ready
        self.ready = False
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("redis connection lost"))
                future.exception()  # mark retrieved; waiters re-raise their own
        self._confirm = {}
        if self._resync_task is not None:
            self._resync_task.cancel()
        if was_ready:
            self.broker.shard_lost(self)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


class RedisBroker(Broker):
    """Rooms over sharded pub/sub; ``cluster=True`` spreads them over a Redis Cluster.

    On a cluster each room's channel and keys share one hash slot (the
    ``{room}`` tag), so a room lives on exactly one primary and this node
    subscribes only there, and only to the rooms its clients watch.
    """

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        reconnect_min: float = 0.1,
        reconnect_max: float = 1.0,
        ping_interval: float = 5.0,
        subscribe_timeout: float = 5.0,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.ping_interval = ping_interval
        self.subscribe_timeout = subscribe_timeout
        self._on_reconnect = on_reconnect
        self.handler: BrokerHandler | None = None
        self._client: Client | None = None
        self._script: StockScript | None = None
        self._load: Any = None
        self._viewers: Any = None
        self._shards: dict[str, Shard] = {}
        self._room_shard: dict[str, Shard] = {}
        self._moves: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return bool(self._shards) and all(shard.ready for shard in self._shards.values())

    async def start(self, handler: BrokerHandler) -> None:
        self.handler = handler
        self._client = connect(self.url, cluster=self.cluster)
        self._script = StockScript(self._client)
        self._load = self._client.register_script(LOAD_SCRIPT)
        self._viewers = self._client.register_script(VIEWERS_SCRIPT)
        if not self.cluster:
            self._add_shard("redis", connect(self.url))  # type: ignore[arg-type]
        else:
            await self._discover()

    async def stop(self) -> None:
        for shard in list(self._shards.values()):
            await shard.stop()
        self._shards.clear()
        if self._client is not None:
            await self._client.aclose()

    def _add_shard(self, name: str, client: aioredis.Redis) -> Shard:
        shard = self._shards[name] = Shard(self, name, client)
        shard.start()
        return shard

    async def _discover(self) -> None:
        """Learn the cluster's primaries; one reader each (started lazily per room)."""
        assert isinstance(self._client, RedisCluster)
        try:
            await self._client.initialize()
        except _CONNECTION_ERRORS as exc:
            log.warning("redis.cluster_unreachable", extra={"fields": {"error": str(exc)}})
            return
        for node in self._client.get_primaries():
            if node.name not in self._shards:
                client = aioredis.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0),
                                        socket_connect_timeout=2.0, socket_keepalive=True)
                self._add_shard(node.name, client)

    def _shard_for(self, room: str) -> Shard | None:
        if not self.cluster:
            return self._shards.get("redis")
        assert isinstance(self._client, RedisCluster)
        try:
            node = self._client.get_node_from_key(channel(room))
        except Exception:  # topology unknown until the cluster answers
            return None
        return self._shards.get(node.name) if node is not None else None

    async def subscribe(self, room: str) -> None:
        shard = self._room_shard.get(room) or self._shard_for(room)
        if shard is None:
            await self._discover()
            shard = self._shard_for(room)
            if shard is None:
                raise BrokerUnavailable("redis cluster is unreachable")
        self._room_shard[room] = shard
        await shard.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        shard = self._room_shard.pop(room, None)
        if shard is not None:
            await shard.unsubscribe(room)

    async def load(self, room: str) -> Stored:
        if self._load is None:
            raise BrokerUnavailable("broker not started")
        try:
            epoch, values = await self._load(keys=[epoch_key(room), stock_key(room)])
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return Stored(_text(epoch), list(values))

    async def report_viewers(self, room: str, node: str, count: int, ttl: float) -> int:
        if self._viewers is None:
            raise BrokerUnavailable("broker not started")
        now_ms = time.time_ns() // 1_000_000
        try:
            total = await self._viewers(keys=[viewers_key(room)],
                                        args=[node, count, now_ms, int(ttl * 1000)])
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return int(total)

    async def execute(self, room: str, op: StockOp) -> OpResult:
        if self._script is None:
            raise BrokerUnavailable("broker not started")
        try:
            return await self._script(room, op)
        except _CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc

    # -- callbacks from shards -------------------------------------------------------

    async def reset_commands(self) -> None:
        """Drop the command client's pooled connections after a shard dropped.

        They most likely died with it; the snapshot reload after reconnecting
        must not be the call that finds out.
        """
        client = self._client
        if isinstance(client, aioredis.Redis):
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect()
        elif isinstance(client, RedisCluster):
            for node in client.get_nodes():
                with contextlib.suppress(Exception):
                    await node.disconnect()

    def reconnected(self) -> None:
        if self._on_reconnect is not None:
            self._on_reconnect()

    def shard_lost(self, shard: Shard) -> None:
        if self.handler is not None:
            self.handler.on_disconnect()

    async def resync(self, rooms: set[str]) -> None:
        if self.handler is not None:
            await self.handler.on_resync(rooms)

    async def topology_changed(self, shard: Shard) -> None:
        """After a shard dropped: on a cluster, slots may have moved (failover).

        Rooms whose slot now lives elsewhere move to that primary's reader.
        """
        if not self.cluster or self._client is None:
            return
        assert isinstance(self._client, RedisCluster)
        with contextlib.suppress(*_CONNECTION_ERRORS):
            await self._client.initialize()
            await self._discover()
        for room in list(shard.rooms):
            target = self._shard_for(room)
            if target is not None and target is not shard:
                shard.rooms.discard(room)
                self._room_shard[room] = target
                task = asyncio.create_task(self._move(room, target))
                self._moves.add(task)
                task.add_done_callback(self._moves.discard)

    async def _move(self, room: str, target: Shard) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await target.subscribe(room)
            await self.resync({room})
