"""One sharded pub/sub connection: the rooms of one Redis primary.

A single Redis is one shard; a Redis Cluster has one per primary.  The shard
owns its reconnection, on a connection of its own (:mod:`gateway.brokers.resp`:
hiredis straight to the hub, with no client library's per-message work in
between), so a dropped connection surfaces here, where it matters.  After a reconnect the shard's
rooms are subscribed again *and then* reloaded from their stored records, or
updates published while we were away would be lost.

Redis also takes a room away from a live connection: when the room's slot
leaves this primary (resharding, or the primary demoted by a failover) it
sends an unsolicited ``sunsubscribe``, and an ``SSUBSCRIBE`` sent with a stale
slot map is answered ``MOVED``.  Either way the room is handed back to the
broker, which finds its new owner; ignoring it would leave the room silently
unsubscribed while everything still looks healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Collection
from typing import Protocol

from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.brokers.base import BrokerHandler, BrokerUnavailable
from gateway.brokers.resp import Endpoint, PubSubConnection, Push
from gateway.protocol import channel, room_of_channel

log = logging.getLogger("stockwire.redis")

CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
#: Longest wait for a shard's tasks to end when the broker stops.
STOP_TIMEOUT = 3.0


class ShardOwner(Protocol):
    """What a shard needs from its broker (the Redis broker implements it)."""

    handler: BrokerHandler | None
    #: True once the broker is stopping: loops end even if a cancellation was lost.
    stopping: bool
    reconnect_min: float
    reconnect_max: float
    ping_interval: float
    subscribe_timeout: float

    def reconnected(self) -> None: ...

    def shard_lost(self, shard: Shard) -> None: ...

    def shard_down(self, shard: Shard) -> None:
        """A connection attempt failed or the connection dropped: the slots may have moved."""

    def room_refused(self, shard: Shard, room: str) -> None:
        """The shard no longer serves ``room``'s slot; the room needs a new owner."""

    def health_changed(self, shard: Shard) -> None: ...

    async def reset_commands(self, shard: Shard) -> None: ...

    async def resync(self, rooms: Collection[str]) -> None: ...


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Shard:
    """One pub/sub connection and the rooms whose channels it carries."""

    def __init__(self, owner: ShardOwner, name: str, endpoint: Endpoint) -> None:
        self.owner = owner
        self.name = name
        self.endpoint = endpoint
        self.rooms: set[str] = set()
        self._ready = False
        self._conn: PubSubConnection | None = None
        #: Channel name (as Redis sends it) -> room: the hot path skips the parsing.
        self._room_of: dict[bytes, str] = {}
        self._confirm: dict[str, asyncio.Future[None]] = {}
        #: SUNSUBSCRIBEs we sent whose reply has not arrived: those replies are
        #: ours, any other ``sunsubscribe`` is Redis taking the channel away.
        self._leaving: dict[str, int] = {}
        #: Set once the first connection attempt is over, either way.
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            self.owner.health_changed(self)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"stockwire-shard-{self.name}")

    async def stop(self) -> None:
        current = asyncio.current_task()
        tasks = {t for t in (self._task, self._resync_task) if t is not None and t is not current}
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a cancellation lost inside a library (one that turns it into a
            # timeout, say) must not keep the gateway from stopping; the loops also
            # check ``owner.stopping`` and end by themselves.
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            if pending:
                log.warning("redis.stop_slow", extra={"fields": {"shard": self.name}})
        self._close_connection()
        self._ready = False

    async def subscribe(self, room: str) -> None:
        """Return once the room's channel is confirmed; the caller loads the room.

        Raises :class:`BrokerUnavailable` while the shard is down; the room is
        remembered, subscribed on reconnect and reloaded then (``resync``).
        """
        if self._conn is None and not self._attempted.is_set():
            # A shard that is still connecting (just started, or a new primary)
            # is not a shard that is down: wait for its first attempt.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attempted.wait(), self.owner.subscribe_timeout)
        self.rooms.add(room)
        conn = self._conn
        if conn is None:
            raise BrokerUnavailable("redis is unreachable")
        name = channel(room)
        future = self._confirm.get(name)
        if future is None:
            future = self._confirm[name] = asyncio.get_running_loop().create_future()
            try:
                conn.send("SSUBSCRIBE", name)
            except ConnectionError as exc:
                raise BrokerUnavailable(str(exc)) from exc
        try:
            await asyncio.wait_for(asyncio.shield(future), self.owner.subscribe_timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable("no subscribe confirmation") from exc

    async def unsubscribe(self, room: str) -> None:
        self.rooms.discard(room)
        name = channel(room)
        self._confirm.pop(name, None)
        if self._conn is not None:
            self._leaving[name] = self._leaving.get(name, 0) + 1
            with contextlib.suppress(ConnectionError):
                self._conn.send("SUNSUBSCRIBE", name)

    async def _run(self) -> None:
        attempt = 0
        connected_once = False
        while not self.owner.stopping:
            try:
                try:
                    await self._connect()
                finally:
                    self._attempted.set()
                if connected_once:
                    self.owner.reconnected()
                connected_once = True
                attempt = 0
                await self._read()
            except asyncio.CancelledError:
                raise
            except CONNECTION_ERRORS as exc:
                if self._ready:
                    log.warning("redis.down", extra={"fields": {"shard": self.name, "error": str(exc)}})
                else:
                    fields = {"shard": self.name, "error": repr(exc)}
                    log.debug("redis.connect_failed", extra={"fields": fields})
            self._lost()
            self._close_connection()
            if self.owner.stopping:
                return
            # Pooled command connections most likely died with this one; drop
            # them so the reload after reconnecting starts fresh.
            await self.owner.reset_commands(self)
            self.owner.shard_down(self)
            # Exponential backoff with full jitter: a fleet of gateways that
            # lost the same Redis must not return in the same millisecond.
            delay = min(self.owner.reconnect_max, self.owner.reconnect_min * 2**attempt)
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(random.uniform(0, delay))

    async def _connect(self) -> None:
        # Connects, authenticates and pings, or raises while Redis is down.
        conn = await PubSubConnection.open(self.endpoint, self._on_push, self._on_error)
        self._conn = conn
        self._leaving = {}
        rooms = list(self.rooms)
        loop = asyncio.get_running_loop()
        self._confirm = {channel(room): loop.create_future() for room in rooms}
        for name in list(self._confirm):  # one per command: SSUBSCRIBE refuses channels of different slots
            conn.send("SSUBSCRIBE", name)
        self._resync_task = asyncio.create_task(self._resync(rooms, list(self._confirm.values())))

    async def _resync(self, rooms: list[str], confirmations: list[asyncio.Future[None]]) -> None:
        """Once the rooms held across the reconnect are confirmed: ready, then reload them.

        Rooms subscribed after the connection came up are loaded by whoever
        subscribed them, so they are not reloaded here a second time.
        """
        try:
            # A room whose slot moved fails its confirmation and is placed elsewhere;
            # it must not keep the rest of this shard from becoming ready.
            await asyncio.wait_for(asyncio.gather(*confirmations, return_exceptions=True),
                                   self.owner.subscribe_timeout)
        except TimeoutError:
            return  # the reader will notice the broken connection and retry
        self._set_ready(True)
        log.info("redis.ready", extra={"fields": {"shard": self.name, "rooms": len(self.rooms)}})
        try:
            await self.owner.resync({room for room in rooms if room in self.rooms})
        except BrokerUnavailable:
            # A reload failed: start the whole cycle again rather than serve
            # rooms whose snapshot we could not read.
            log.warning("redis.resync_failed", extra={"fields": {"shard": self.name}})
            self._close_connection()

    async def _read(self) -> None:
        """Wait while the connection lasts; its pushes are dispatched as they arrive."""
        conn = self._conn
        assert conn is not None
        watchdog = asyncio.create_task(self._watchdog(conn))
        try:
            await conn.wait_closed()
        finally:
            watchdog.cancel()

    def _on_push(self, push: Push) -> None:
        """One message from Redis: the hot path is the first branch."""
        kind = push[0]
        if kind == b"smessage":
            room = self._room_of.get(push[1])
            if room is None:
                room = room_of_channel(push[1])
                if room is None:
                    return
                self._room_of[push[1]] = room
            handler = self.owner.handler
            if handler is not None:
                handler.on_message(room, push[2])
        elif kind == b"ssubscribe":
            future = self._confirm.get(_text(push[1]))
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == b"sunsubscribe":
            self._unsubscribed(push[1])

    def _on_error(self, error: Exception) -> None:
        """An error reply: ``MOVED <slot> <host:port>`` for an SSUBSCRIBE sent to the wrong primary."""
        words = str(error).split()
        if len(words) >= 2 and words[0] == "MOVED" and words[1].isdigit():
            self._refused_slot(int(words[1]))
        else:
            log.warning("redis.error_reply", extra={"fields": {"shard": self.name, "error": str(error)}})

    def _unsubscribed(self, raw: bytes | str) -> None:
        """A ``sunsubscribe``: the reply to ours, or Redis dropping a moved slot's channel."""
        name = _text(raw)
        leaving = self._leaving.get(name, 0)
        if leaving:
            if leaving == 1:
                del self._leaving[name]
            else:
                self._leaving[name] = leaving - 1
            return
        room = room_of_channel(name)
        if room is not None and room in self.rooms:
            log.info("redis.slot_moved", extra={"fields": {"shard": self.name, "room": room}})
            self._give_up(room)

    def _refused_slot(self, slot: int) -> None:
        """``MOVED``: hand back every room of that slot still waiting for its confirmation."""
        for name, future in list(self._confirm.items()):
            room = room_of_channel(name)
            if room is not None and not future.done() and key_slot(name.encode()) == slot:
                log.info("redis.subscribe_moved", extra={"fields": {"shard": self.name, "room": room}})
                self._give_up(room)

    def _give_up(self, room: str) -> None:
        self.rooms.discard(room)
        name = channel(room)
        future = self._confirm.pop(name, None)
        if future is not None and not future.done():
            future.set_exception(BrokerUnavailable("the room's slot moved to another shard"))
            future.exception()  # mark retrieved; waiters re-raise their own
        self.owner.room_refused(self, room)

    async def _watchdog(self, conn: PubSubConnection) -> None:
        """Ping through the pub/sub connection; a silent connection is a dead one."""
        interval = self.owner.ping_interval
        seen, quiet = conn.received, 0
        while True:
            await asyncio.sleep(interval)
            if conn.received == seen:
                quiet += 1
                if quiet >= 3:
                    log.warning("redis.silent", extra={"fields": {"shard": self.name}})
                    conn.close()
                    return
            else:
                seen, quiet = conn.received, 0
            with contextlib.suppress(ConnectionError):
                conn.send("PING")

    def _lost(self) -> None:
        was_ready = self._ready
        self._set_ready(False)
        for future in self._confirm.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("redis connection lost"))
                future.exception()  # mark retrieved; waiters re-raise their own
        self._confirm = {}
        if self._resync_task is not None:
            self._resync_task.cancel()
        if was_ready:
            self.owner.shard_lost(self)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
