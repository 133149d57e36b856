"""Redis broker: sharded pub/sub, on one Redis or across a Redis Cluster.

Rooms are subscribed on demand with SSUBSCRIBE, on the connection of the
shard that owns the room's slot (a single Redis is one shard; see
:mod:`gateway.brokers.shard`).  On a cluster the broker also keeps the list of
shards equal to the cluster's current primaries: after a failover or a
resharding, rooms move to their slot's new owner, are subscribed there and
then reloaded, and shards that are no longer primaries are dropped.

Readiness on a cluster means "this node can reach the cluster": the slot map
is known and at least one primary's subscription is up.  One dead primary
stalls only the rooms it owns, on every node alike, so taking every node out
of the load balancer for it would only cut off the rooms on healthy shards;
per-shard health goes to ``on_shard_state`` (the ``stockwire_redis_shard_up``
gauge) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Collection, Coroutine
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from gateway.brokers.base import Broker, BrokerHandler, BrokerUnavailable
from gateway.brokers.resp import Endpoint
from gateway.brokers.shard import CONNECTION_ERRORS, STOP_TIMEOUT, Shard
from gateway.protocol import Stored, channel, epoch_key, stock_key, viewers_key
from gateway.stock import LUA_SCRIPT, OpResult, Status, StockOp

log = logging.getLogger("stockwire.redis")

_REFRESH_ERRORS = (*CONNECTION_ERRORS, RedisClusterException)

#: Reads a room's epoch and records in one atomic step (a script, not MULTI,
#: so it runs unchanged on a cluster: both keys share the room's hash slot).
LOAD_SCRIPT = """
return {redis.call('GET', KEYS[1]) or '', redis.call('HVALS', KEYS[2])}
"""

#: Sets this node's viewer count, drops other nodes' expired entries, returns the sum.
#: Expiry is judged on the Redis server's clock, never a gateway's: a node whose
#: clock runs ahead would otherwise delete live entries of the others, and one
#: running behind would keep a dead node's viewers.
VIEWERS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl, total = tonumber(ARGV[3]), 0
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + ttl))
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
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
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


class RedisBroker(Broker):
    """Rooms over sharded pub/sub; ``cluster=True`` spreads them over a Redis Cluster.

    On a cluster each room's channel and keys share one hash slot (the
    ``{room}`` tag), so a room lives on exactly one primary and this node
    subscribes only there, and only to the rooms its clients watch.
    ``on_shard_state(name, up)`` hears every change of a shard's health, and
    ``up=None`` when a shard is gone (no longer a primary).
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
        on_shard_state: Callable[[str, bool | None], None] | None = None,
    ) -> None:
        self.url = url
        #: Where pub/sub connections go: this node (single Redis), or with these
        #: credentials at each primary (cluster).
        self._endpoint = Endpoint.from_url(url)
        self.cluster = cluster
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.ping_interval = ping_interval
        self.subscribe_timeout = subscribe_timeout
        self._on_reconnect = on_reconnect
        self._on_shard_state = on_shard_state
        self.handler: BrokerHandler | None = None
        self._client: Client | None = None
        self._script: StockScript | None = None
        self._load: Any = None
        self._viewers: Any = None
        self._shards: dict[str, Shard] = {}
        self._room_shard: dict[str, Shard] = {}
        #: Rooms a shard gave back (their slot moved), with the shard and how many
        #: slot-map refreshes still named it as the owner.
        self._unplaced: dict[str, tuple[Shard, int]] = {}
        self._topology_known = False
        self._refresh_wanted = False
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def ready(self) -> bool:
        """Single Redis: its subscription is up.  Cluster: the slot map is known and
        at least one primary's subscription is up (see the module docstring)."""
        if not self.cluster:
            return bool(self._shards) and all(shard.ready for shard in self._shards.values())
        return self._topology_known and any(shard.ready for shard in self._shards.values())

    def subscriptions(self) -> dict[str, str]:
        """Room -> the shard whose connection carries it (rooms between shards left out)."""
        return {room: shard.name for room, shard in self._room_shard.items() if room in shard.rooms}

    def shard_health(self) -> dict[str, bool]:
        """Current shards (primaries) and whether each one's subscription is up."""
        return {name: shard.ready for name, shard in self._shards.items()}

    async def start(self, handler: BrokerHandler) -> None:
        self.handler = handler
        self._client = connect(self.url, cluster=self.cluster)
        self._script = StockScript(self._client)
        self._load = self._client.register_script(LOAD_SCRIPT)
        self._viewers = self._client.register_script(VIEWERS_SCRIPT)
        if not self.cluster:
            self._add_shard(self._endpoint.name, self._endpoint)
        elif not await self._refresh():
            self.request_refresh()  # keep trying: without a slot map the node is never ready

    async def stop(self) -> None:
        self._stopping = True  # loops end even if a cancellation is lost inside a library
        tasks = [t for t in (self._refresher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        for shard in list(self._shards.values()):
            await shard.stop()
        self._shards.clear()
        if self._client is not None:
            await self._client.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _add_shard(self, name: str, endpoint: Endpoint) -> Shard:
        shard = self._shards[name] = Shard(self, name, endpoint)
        self.health_changed(shard)
        shard.start()
        return shard

    def _shard_for(self, room: str) -> Shard | None:
        if not self.cluster:
            return next(iter(self._shards.values()), None)
        assert isinstance(self._client, RedisCluster)
        try:
            node = self._client.get_node_from_key(channel(room))
        except Exception:  # topology unknown until the cluster answers
            return None
        return self._shards.get(node.name) if node is not None else None

    async def subscribe(self, room: str) -> None:
        shard = self._room_shard.get(room) or self._shard_for(room)
        if shard is None:
            await self._refresh()
            shard = self._shard_for(room)
            if shard is None:
                raise BrokerUnavailable("redis cluster is unreachable")
        self._room_shard[room] = shard
        await shard.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        self._unplaced.pop(room, None)
        shard = self._room_shard.pop(room, None)
        if shard is not None:
            await shard.unsubscribe(room)

    async def load(self, room: str) -> Stored:
        if self._load is None:
            raise BrokerUnavailable("broker not started")
        try:
            epoch, values = await self._load(keys=[epoch_key(room), stock_key(room)])
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return Stored(_text(epoch), list(values))

    async def report_viewers(self, room: str, node: str, count: int, ttl: float) -> int:
        if self._viewers is None:
            raise BrokerUnavailable("broker not started")
        shard = self._room_shard.get(room)
        if shard is not None and not shard.ready:
            # Fail fast: waiting for a dead primary's connect timeout would hold
            # up the reports of every room after this one.
            raise BrokerUnavailable("the room's shard is unreachable")
        try:
            total = await self._viewers(keys=[viewers_key(room)], args=[node, count, int(ttl * 1000)])
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return int(total)

    async def execute(self, room: str, op: StockOp) -> OpResult:
        if self._script is None:
            raise BrokerUnavailable("broker not started")
        try:
            return await self._script(room, op)
        except CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc

    # -- callbacks from shards -------------------------------------------------------

    async def reset_commands(self, shard: Shard) -> None:
        """Drop the command client's idle connections to a shard that dropped.

        They most likely died with it; the snapshot reload after reconnecting
        must not be the call that finds out.  Connections in use are only
        marked: closing them under a running command breaks that command in
        ways redis-py does not report as a connection error, and on a
        cluster the other primaries' connections are fine.
        """
        client = self._client
        if isinstance(client, aioredis.Redis):
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect(inuse_connections=False)
        elif isinstance(client, RedisCluster):
            node = client.get_node(node_name=shard.name)
            if node is not None:
                node.update_active_connections_for_reconnect()
                with contextlib.suppress(Exception):
                    await node.disconnect_free_connections()

    def reconnected(self) -> None:
        if self._on_reconnect is not None:
            self._on_reconnect()

    def shard_lost(self, shard: Shard) -> None:
        if self.handler is not None:
            self.handler.on_disconnect()

    def health_changed(self, shard: Shard) -> None:
        if self._on_shard_state is not None and self._shards.get(shard.name) is shard:
            self._on_shard_state(shard.name, shard.ready)

    async def resync(self, rooms: Collection[str]) -> None:
        if self.handler is not None:
            await self.handler.on_resync(rooms)

    def shard_down(self, shard: Shard) -> None:
        """On a cluster the slots of a dropped primary may have moved (failover)."""
        if self.cluster:
            self.request_refresh()

    def room_refused(self, shard: Shard, room: str) -> None:
        if self._room_shard.get(room) is not shard:
            return  # no longer wanted there
        if not self.cluster:
            self._move(room, shard)  # one Redis: nowhere else to go, subscribe again
            return
        previous = self._unplaced.get(room)
        self._unplaced[room] = (shard, previous[1] if previous and previous[0] is shard else 0)
        self.request_refresh()

    # -- cluster topology ----------------------------------------------------------------

    def request_refresh(self) -> None:
        """Refresh the slot map soon; concurrent requests share one refresh."""
        if self._stopping:
            return
        self._refresh_wanted = True
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_until_settled(),
                                                  name="stockwire-cluster-refresh")

    async def _refresh_until_settled(self) -> None:
        """Refresh until the map is known and every given-back room has an owner.

        A node that just lost a slot knows it before the rest of the cluster
        does, so the first map read may still name it; retry with backoff.
        """
        attempt = 0
        while not self._stopping and (self._refresh_wanted or self._unplaced or not self._topology_known):
            self._refresh_wanted = False
            if await self._refresh() and not self._unplaced and not self._refresh_wanted:
                return
            delay = min(self.reconnect_max, self.reconnect_min * 2**attempt)
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _refresh(self) -> bool:
        """Read the slot map (CLUSTER SLOTS) and bring shards and rooms in line with it."""
        client = self._client
        if not isinstance(client, RedisCluster):
            return True
        try:
            await client.initialize()  # first use, or after redis-py reset itself
            await client.nodes_manager.initialize()
        except _REFRESH_ERRORS as exc:
            log.warning("redis.cluster_unreachable", extra={"fields": {"error": str(exc)}})
            return False
        self._topology_known = True
        self._sync_shards(client)
        return True

    def _sync_shards(self, client: RedisCluster) -> None:
        """One shard per current primary; rooms of dead or former primaries move to their owner."""
        primaries = {node.name: node for node in client.get_primaries()}
        for name, node in primaries.items():
            if name not in self._shards:
                self._add_shard(name, self._endpoint.at(node.host, node.port))
        for shard in list(self._shards.values()):
            # A live connection is never emptied on the map's word: a map read
            # from a node that has not heard of a failover yet is stale, and a
            # live primary tells us itself when a slot leaves (sunsubscribe).
            if not shard.ready:
                for room in list(shard.rooms):
                    target = self._shard_for(room)
                    if target is not None and target is not shard:
                        shard.rooms.discard(room)
                        self._move(room, target)
            if shard.name not in primaries and not shard.rooms:
                self._retire(shard)
        for room, (refuser, refreshes) in list(self._unplaced.items()):
            target = self._shard_for(room)
            if target is None:
                continue
            if target is refuser and refreshes < 2:
                self._unplaced[room] = (refuser, refreshes + 1)
                continue
            # Either a new owner, or the map keeps naming the same one: the slot
            # may have come back, and if not, it will answer MOVED again.
            del self._unplaced[room]
            self._move(room, target)

    def _retire(self, shard: Shard) -> None:
        del self._shards[shard.name]
        log.info("redis.shard_removed", extra={"fields": {"shard": shard.name}})
        if self._on_shard_state is not None:
            self._on_shard_state(shard.name, None)
        self._spawn(shard.stop(), f"stockwire-shard-stop-{shard.name}")

    def _move(self, room: str, target: Shard) -> None:
        self._room_shard[room] = target
        self._spawn(self._moved(room, target), f"stockwire-move-{room}")

    async def _moved(self, room: str, target: Shard) -> None:
        """Subscribe on the new owner, then reload: updates published in between were
        delivered to nobody."""
        try:
            await target.subscribe(room)
        except BrokerUnavailable:
            return  # down: it reloads its rooms when it connects; refused: placed again
        attempt = 0
        while (not self._stopping and self._room_shard.get(room) is target and room in target.rooms
               and target.ready):
            try:
                await self.resync({room})
                return
            except BrokerUnavailable:
                delay = min(self.reconnect_max, self.reconnect_min * 2**attempt)
                attempt = min(attempt + 1, 16)
                await asyncio.sleep(random.uniform(0, delay))
