"""One sharded pub/sub connection: the rooms of one Redis primary.

A single Redis is one shard; a Redis Cluster has one per primary.  The shard's
reader owns its reconnection: redis-py's own retries are off so a dropped
connection surfaces here, where it matters.  After a reconnect the shard's
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
import time
from collections.abc import Collection
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisError

from gateway.brokers.base import BrokerHandler, BrokerUnavailable
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

    def __init__(self, owner: ShardOwner, name: str, client: aioredis.Redis) -> None:
        self.owner = owner
        self.name = name
        self.client = client
        self.rooms: set[str] = set()
        self._ready = False
        self._pubsub: Any = None
        self._confirm: dict[str, asyncio.Future[None]] = {}
        #: SUNSUBSCRIBEs we sent whose reply has not arrived: those replies are
        #: ours, any other ``sunsubscribe`` is Redis taking the channel away.
        self._leaving: dict[str, int] = {}
        self._last_seen = 0.0
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
        await self._close_pubsub()
        with contextlib.suppress(Exception):
            await self.client.aclose()
        self._ready = False

    async def subscribe(self, room: str) -> None:
        """Return once the room's channel is confirmed; the caller loads the room.

        Raises :class:`BrokerUnavailable` while the shard is down; the room is
        remembered, subscribed on reconnect and reloaded then (``resync``).
        """
        if self._pubsub is None and not self._attempted.is_set():
            # A shard that is still connecting (just started, or a new primary)
            # is not a shard that is down: wait for its first attempt.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attempted.wait(), self.owner.subscribe_timeout)
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
            except CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(str(exc)) from exc
        try:
            await asyncio.wait_for(asyncio.shield(future), self.owner.subscribe_timeout)
        except TimeoutError as exc:
            raise BrokerUnavailable("no subscribe confirmation") from exc

    async def unsubscribe(self, room: str) -> None:
        self.rooms.discard(room)
        name = channel(room)
        self._confirm.pop(name, None)
        if self._pubsub is not None:
            self._leaving[name] = self._leaving.get(name, 0) + 1
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._pubsub.sunsubscribe(name)

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
            if self.owner.stopping:
                return
            await self._close_pubsub()
            # Pooled command connections died with this one; drop them so the
            # reload after reconnecting starts fresh.
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect()
            await self.owner.reset_commands(self)
            self.owner.shard_down(self)
            # Exponential backoff with full jitter: a fleet of gateways that
            # lost the same Redis must not return in the same millisecond.
            delay = min(self.owner.reconnect_max, self.owner.reconnect_min * 2**attempt)
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(random.uniform(0, delay))

    async def _connect(self) -> None:
        pubsub = self.client.pubsub()
        await pubsub.ping()  # connects, or raises while Redis is down
        self._pubsub = pubsub
        self._last_seen = time.monotonic()
        self._leaving = {}
        rooms = list(self.rooms)
        loop = asyncio.get_running_loop()
        self._confirm = {channel(room): loop.create_future() for room in rooms}
        for name in list(self._confirm):  # one per command: SSUBSCRIBE refuses channels of different slots
            await pubsub.ssubscribe(name)
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
            if self._pubsub is not None and self._pubsub.connection is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.connection.disconnect()

    async def _read(self) -> None:
        pubsub = self._pubsub
        handler = self.owner.handler
        assert pubsub is not None
        assert handler is not None
        watchdog = asyncio.create_task(self._watchdog(pubsub))
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except MovedError as exc:  # an SSUBSCRIBE of ours went to the wrong primary
                    self._last_seen = time.monotonic()
                    self._refused_slot(exc.slot_id)
                    continue
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
                elif kind == "sunsubscribe":
                    self._unsubscribed(message["channel"])
        finally:
            watchdog.cancel()

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
        if self._pubsub is not None:
            # Forget it locally too, so a reconnect of this pubsub would not resubscribe it.
            self._pubsub.shard_channels.pop(name.encode(), None)
        self.owner.room_refused(self, room)

    async def _watchdog(self, pubsub: Any) -> None:
        """Ping through the pub/sub connection; a silent connection is a dead one."""
        interval = self.owner.ping_interval
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_seen > 3 * interval:
                log.warning("redis.silent", extra={"fields": {"shard": self.name}})
                with contextlib.suppress(Exception):
                    await pubsub.connection.disconnect()
                return
            with contextlib.suppress(*CONNECTION_ERRORS):
                await pubsub.ping()

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

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
