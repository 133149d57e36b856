"""Rooms and their clients: merge, encode once, write once.

The hub is the only place that touches both the broker's records and the
clients.  It owns timers and tasks; the rules it applies (versions, merging,
pacing, alert tiers) live in the I/O-free ``room`` and ``pacing`` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgpack

from gateway.alerts import Thresholds
from gateway.brokers.base import Broker, BrokerUnavailable
from gateway.metrics import Metrics
from gateway.pacing import Pacer
from gateway.protocol import (
    AUDIENCES,
    Audience,
    BadMessage,
    CloseCode,
    StockRecord,
    decode_record,
    encode_frame,
    ws_binary_frame,
)
from gateway.room import Epoch, Held, Outcome, RoomState
from gateway.throttle import Throttle

log = logging.getLogger("stockwire.hub")


class Client(Protocol):
    """What the hub needs from a connection; the websocket adapter provides it.

    The hub writes only through :meth:`offer`, so every frame it sends (updates,
    snapshots, host stats) is subject to the same send-buffer bound.
    """

    room: str
    audience: Audience
    lagging_since: float | None

    def offer(self, frame: bytes, limit: int) -> bool:
        """Write ``frame`` unless more than ``limit`` bytes are already queued."""
        ...

    def buffered(self) -> int: ...

    def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class HubConfig:
    interval: float = 0.1
    #: Least time between two frames when the second is urgent (a tier change):
    #: transitions still skip the interval, but a flickering SKU cannot turn
    #: every update into a frame.
    urgent_interval: float = 0.02
    thresholds: Thresholds = field(default_factory=Thresholds)
    send_buffer_limit: int = 256 * 1024
    slow_client_timeout: float = 10.0
    room_grace: float = 5.0
    max_record_bytes: int = 8 * 1024
    sweep_interval: float = 0.1
    #: Stuck clients closed per sweep: closing a thousand at once is a CPU spike
    #: that the healthy clients would feel as latency.
    closes_per_sweep: int = 50
    #: How often hosts get a ``stats`` frame (velocity, ETA, viewer count).
    stats_interval: float = 1.0
    #: Backoff between attempts to load a room whose snapshot could not be read
    #: (doubling from the first to the cap, jittered).
    load_retry_min: float = 0.1
    load_retry_max: float = 5.0
    #: Most the intervals may be stretched while this process is behind on
    #: reading Redis (``gateway.throttle``); 1 turns stretching off.
    max_stretch: float = 1.0


class Room:
    def __init__(self, name: str, config: HubConfig) -> None:
        self.name = name
        self.state = RoomState(name, config.thresholds)
        self.pacer = Pacer(config.interval, config.urgent_interval)
        self.clients: dict[Audience, set[Client]] = {a: set() for a in AUDIENCES}
        #: The clients a flush writes to: every member that is not lagging.
        #: Kept apart so the fan-out loop asks each client nothing before
        #: writing — at thousands of clients one check more per client is a
        #: visit to one more object, and measurably slower.
        self.live: dict[Audience, set[Client]] = {a: set() for a in AUDIENCES}
        self.loaded = False
        self.timer: asyncio.TimerHandle | None = None
        self.grace: asyncio.TimerHandle | None = None
        self.snapshots: dict[Audience, bytes] = {}
        self.load_lock = asyncio.Lock()
        #: Viewers over all gateway nodes, from the last report (0: not known yet).
        self.viewers_total = 0
        #: While a snapshot is due or being read, what arrives meanwhile; None
        #: once the room is live.  A new room starts held: it is not loaded.
        self.held: Held | None = Held()
        #: Epochs on records that were neither the room's nor known past ones.
        self.suspects: set[str] = set()
        self.loader: asyncio.Task[None] | None = None
        self.subscribed = False

    def __len__(self) -> int:
        return sum(len(c) for c in self.clients.values())

    def all_clients(self) -> Iterable[Client]:
        for clients in self.clients.values():
            yield from clients


class Hub:
    def __init__(
        self,
        broker: Broker,
        config: HubConfig | None = None,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.broker = broker
        self.config = config or HubConfig()
        self.metrics = metrics or Metrics()
        self.rooms: dict[str, Room] = {}
        self.lagging: set[Client] = set()
        #: Names this node in shared per-room state (viewer counts).
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._wall_ms = wall_ms
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = False
        self._stats: asyncio.Task[None] | None = None
        m = self.metrics
        self._sent = {k: m.frames_sent.labels(k) for k in ("update", "snapshot")}
        self._bytes = {k: m.bytes_sent.labels(k) for k in ("update", "snapshot")}
        self._encoded = {k: m.frames_encoded.labels(k) for k in ("update", "snapshot")}
        self.throttle = Throttle(self.config.interval, self.config.max_stretch)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = self._loop.time
        await self.broker.start(self)
        self.metrics.broker_ready.set(1 if self.broker.ready else 0)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="stockwire-sweeper")
        self._stats = asyncio.create_task(self._stats_forever(), name="stockwire-stats")

    async def stop(self) -> None:
        self._stopped = True  # loaders end even if a cancellation is lost in the broker
        for task in [self._sweeper, self._stats, *self._tasks, *self._unsubscribing.values()]:
            if task is not None:
                task.cancel()
        for room in self.rooms.values():
            for handle in (room.timer, room.grace):
                if handle is not None:
                    handle.cancel()
        await self.broker.stop()

    def now(self) -> float:
        assert self._clock is not None
        return self._clock()

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- clients ---------------------------------------------------------------

    def join(self, client: Client) -> None:
        """Attach a client; it receives a snapshot now, or as soon as the room loads."""
        name = client.room
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self.config)
            room.pacer.stretch = self.throttle.stretch
            self.metrics.rooms.set(len(self.rooms))
            self._start_loader(room)
        if room.grace is not None:
            room.grace.cancel()
            room.grace = None
        client.lagging_since = None
        room.clients[client.audience].add(client)
        room.live[client.audience].add(client)
        self.metrics.connections.labels(client.audience).inc()
        if room.loaded:
            self._send_snapshot(room, client)

    def leave(self, client: Client) -> None:
        room = self.rooms.get(client.room)
        if room is None or client not in room.clients[client.audience]:
            return
        room.clients[client.audience].discard(client)
        room.live[client.audience].discard(client)
        self.metrics.connections.labels(client.audience).dec()
        self.lagging.discard(client)
        self.metrics.lagging.set(len(self.lagging))
        if len(room) == 0 and room.grace is None:
            room.grace = self._loop.call_later(self.config.room_grace, self._expire, room)

    def resync(self, client: Client) -> None:
        """A client asked for a fresh snapshot (it saw a sequence gap)."""
        room = self.rooms.get(client.room)
        if room is not None and room.loaded and client.lagging_since is None:
            self._send_snapshot(room, client)

    def _live(self, room: Room) -> bool:
        return not self._stopped and self.rooms.get(room.name) is room

    def _expire(self, room: Room) -> None:
        room.grace = None
        if len(room) or not self._live(room):
            return
        del self.rooms[room.name]
        self.metrics.rooms.set(len(self.rooms))
        if room.timer is not None:
            room.timer.cancel()
        self._release(room.name)

    def _release(self, name: str) -> None:
        """Unsubscribe ``name``; a room created meanwhile waits for this first."""
        previous = self._unsubscribing.get(name)
        self._unsubscribing[name] = asyncio.create_task(self._unsubscribe(name, previous))

    async def _unsubscribe(self, name: str, previous: asyncio.Task[None] | None) -> None:
        try:
            if previous is not None:
                await asyncio.shield(previous)
            if name not in self.rooms:  # else a new room wants the subscription: keep it
                with contextlib.suppress(BrokerUnavailable):
                    await self.broker.unsubscribe(name)
        finally:
            if self._unsubscribing.get(name) is asyncio.current_task():
                del self._unsubscribing[name]

    # -- loading ---------------------------------------------------------------

    def _start_loader(self, room: Room) -> None:
        """Make sure a task is loading ``room``; it retries until it succeeds."""
        if room.loader is None or room.loader.done():
            room.loader = self._spawn(self._load(room), f"load:{room.name}")

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff, jittered so rooms and nodes spread out."""
        cap = min(self.config.load_retry_max, self.config.load_retry_min * 2 ** min(attempt, 16))
        return cap / 2 + random.uniform(0, cap / 2)

    async def _load(self, room: Room) -> None:
        """Subscribe first, then read the snapshot: no update can fall between.

        Runs while the room is held (``room.held`` is not None).  A failed
        read is retried with backoff, since nothing else would retry it (the
        broker resyncs only after a lost connection).  While records show
        epochs that no read explained, it reads again.
        """
        pending = self._unsubscribing.get(room.name)
        if pending is not None:
            await asyncio.shield(pending)
        failures = rounds = 0
        while self._live(room):
            if room.held is not None:
                try:
                    async with room.load_lock:
                        if room.held is not None:  # else on_resync read it meanwhile
                            if not room.subscribed and not await self._subscribe(room):
                                return
                            await self._adopt_snapshot(room)
                except BrokerUnavailable as exc:
                    self._load_failed(room, exc)
                    await asyncio.sleep(self._backoff(failures))
                    failures += 1
                    continue
                failures = 0
            if not room.suspects:
                return
            # Records that arrived during the read carry an epoch it did not
            # show: Redis may have started over again.  Read once more, at once
            # the first time and then with backoff, so a publisher writing
            # bogus epochs cannot keep the room reloading back to back.
            await asyncio.sleep(self._backoff(rounds) if rounds else 0)
            rounds += 1
            if room.held is None:
                room.held = Held()

    async def _subscribe(self, room: Room) -> bool:
        """Subscribe ``room``; False if it was dropped meanwhile.

        A room that expired while its subscribe was in flight must not leave
        the subscription behind: the unsubscribe may have gone out first.
        """
        try:
            if self._live(room):
                await self.broker.subscribe(room.name)
                room.subscribed = True
        finally:
            if not self._live(room):
                self._release(room.name)
        return self._live(room)

    def _load_failed(self, room: Room, exc: Exception) -> None:
        self.metrics.load_failures.inc()
        log.warning("room.load_failed", extra={"fields": {"room": room.name, "error": str(exc)}})

    async def _adopt_snapshot(self, room: Room) -> None:
        """Read the room and make it live; call with the room's load lock held."""
        seen, room.suspects = room.suspects, set()
        room.held = held = Held()  # what arrived before the read, the read covers
        try:
            stored = await self.broker.load(room.name)
        except BrokerUnavailable:
            room.suspects |= seen
            raise
        records = []
        for payload in stored.records:
            record = self._decode(room.name, payload)
            if record is not None:
                records.append(record)
        room.held = None
        unexplained, discarded = room.state.adopt(records, stored.epoch, held, seen)
        self.metrics.updates_discarded.inc(discarded)
        room.suspects |= unexplained
        if held.mixed:
            room.suspects.add(stored.epoch)  # a change of epoch during the read: read again
        room.loaded = True
        room.snapshots.clear()
        for client in list(room.all_clients()):
            if client.lagging_since is None:
                self._send_snapshot(room, client)

    # -- broker handler ----------------------------------------------------------

    def on_message(self, room_name: str, payload: bytes) -> None:
        room = self.rooms.get(room_name)
        if room is None:
            return
        record = self._decode(room_name, payload)
        if record is None:
            return
        self.metrics.updates_received.inc()
        age = max(0, self._wall_ms() - record.ts) / 1000
        self.metrics.publish_to_receive.observe(age)
        self.throttle.observe(age)
        if room.held is not None:
            if not room.held.add(record):
                self.metrics.updates_discarded.inc()
            return
        verdict = room.state.judge(record.ep)
        if verdict is Epoch.PAST:
            self.metrics.updates_discarded.inc()
            return
        if verdict is Epoch.UNKNOWN:
            # Not an older version but possibly a new start (FLUSHALL, keys
            # deleted, re-seeded): only the stored snapshot can tell, so read it
            # and hold updates meanwhile.  The read covers this record too.
            log.info("room.epoch_changed", extra={"fields": {
                "room": room.name, "epoch": room.state.epoch, "record_epoch": record.ep}})
            room.suspects.add(record.ep)  # type: ignore[arg-type]
            if room.loader is None or room.loader.done():
                room.held = Held()
                self._start_loader(room)
            # else a read is already due (the loader waits out its backoff)
            return
        superseded = record.sku in room.state.pending
        outcome = room.state.apply(record)
        if outcome is Outcome.STALE:
            self.metrics.updates_discarded.inc()
            return
        if superseded:
            self.metrics.updates_merged.inc()
        now = self.now()
        due = room.pacer.on_change(now, urgent=outcome is Outcome.URGENT)
        if due is None:
            return
        if due <= now:
            self.flush(room)
        else:
            if room.timer is not None:
                room.timer.cancel()
            room.timer = self._loop.call_later(due - now, self.flush, room)

    async def on_resync(self, rooms: Collection[str]) -> None:
        """Reload these rooms from the broker and push the corrected state.

        A room whose reload fails is left to its loader, which retries with
        backoff; the other rooms are reloaded regardless.
        """
        self.metrics.broker_ready.set(1 if self.broker.ready else 0)
        for room in [r for name, r in self.rooms.items() if name in rooms]:
            try:
                async with room.load_lock:
                    await self._adopt_snapshot(room)
            except BrokerUnavailable as exc:
                self._load_failed(room, exc)
                self._start_loader(room)
                continue
            if room.suspects and (room.loader is None or room.loader.done()):
                room.held = Held()
                self._start_loader(room)

    def on_disconnect(self) -> None:
        self.metrics.broker_ready.set(0)

    def _decode(self, room_name: str, payload: bytes) -> StockRecord | None:
        try:
            return decode_record(payload, max_bytes=self.config.max_record_bytes)
        except BadMessage as exc:
            self.metrics.messages_dropped.labels(exc.reason).inc()
            log.warning(
                "publisher.message_dropped",
                extra={"fields": {"room": room_name, "reason": exc.reason, "detail": exc.detail}},
            )
            return None

    # -- fan-out -----------------------------------------------------------------

    def flush(self, room: Room) -> None:
        """Send the room's merged changes: one encode per audience, one write per client."""
        started = time.perf_counter()
        if room.timer is not None:
            room.timer.cancel()
            room.timer = None
        room.pacer.flushed(self.now())
        changes = room.state.take_pending()
        if not changes:
            return
        room.snapshots.clear()
        sent_ms = self._wall_ms()
        for audience, clients in room.live.items():
            if not clients:
                continue
            items = room.state.view(changes, audience)
            payload = encode_frame("update", room.name, room.state.seq, sent_ms, items)
            frame = ws_binary_frame(payload)
            self._encoded["update"].inc()
            self._fanout(clients, frame)
        observe = self.metrics.publish_to_send.observe
        for record in changes:
            observe(max(0, sent_ms - record.ts) / 1000)
        self.metrics.flush_seconds.observe(time.perf_counter() - started)

    def _fanout(self, clients: set[Client], frame: bytes) -> None:
        """The hot loop: one bounded buffer append per client, nothing else."""
        limit = self.config.send_buffer_limit
        slow = [client for client in clients if not client.offer(frame, limit)]
        written = len(clients) - len(slow)
        for client in slow:  # not inside the loop: it leaves ``clients``
            self._lagging(client)
        self.metrics.lagging.set(len(self.lagging))
        self._sent["update"].inc(written)
        self._bytes["update"].inc(written * len(frame))

    def _offer(self, client: Client, frame: bytes) -> bool:
        """Every write goes through a bound, snapshots included, so a client's
        queued bytes never exceed the bound plus one frame.  A lagging client
        gets no increments; a fresh snapshot replaces them once it drains."""
        if client.offer(frame, self.config.send_buffer_limit):
            return True
        self._lagging(client)
        return False

    def _lagging(self, client: Client) -> None:
        client.lagging_since = self.now()
        self.lagging.add(client)
        room = self.rooms.get(client.room)
        if room is not None:
            room.live[client.audience].discard(client)
        self.metrics.slow_clients.inc()

    def _snapshot_frame(self, room: Room, audience: Audience) -> bytes:
        frame = room.snapshots.get(audience)
        if frame is None:
            items = room.state.snapshot_view(audience)
            payload = encode_frame("snapshot", room.name, room.state.seq, self._wall_ms(), items,
                                   {"epoch": room.state.epoch or ""})
            frame = room.snapshots[audience] = ws_binary_frame(payload)
            self._encoded["snapshot"].inc()
        return frame

    def _send_snapshot(self, room: Room, client: Client) -> None:
        frame = self._snapshot_frame(room, client.audience)
        if not self._offer(client, frame):
            self.metrics.lagging.set(len(self.lagging))
            return
        self._sent["snapshot"].inc()
        self._bytes["snapshot"].inc(len(frame))
        if client.audience == "host" and not self._offer(client, self._stats_frame(room)):
            self.metrics.lagging.set(len(self.lagging))

    # -- host stats ------------------------------------------------------------------

    def viewers(self, room: Room) -> int:
        """Viewers across every node, as of the last report; this node's own until then."""
        return max(room.viewers_total, len(room.clients["viewer"]))

    async def report_viewers(self) -> None:
        """Share this node's viewer counts through the broker and read the totals.

        A room whose report fails falls back to this node's own count; the
        other rooms are still reported (on a cluster they may live elsewhere).
        """
        ttl = max(1.0, 3 * self.config.stats_interval)
        for room in list(self.rooms.values()):
            if not len(room):
                continue
            try:
                room.viewers_total = await self.broker.report_viewers(
                    room.name, self.node_id, len(room.clients["viewer"]), ttl)
            except BrokerUnavailable:
                room.viewers_total = 0

    def _stats_frame(self, room: Room) -> bytes:
        now_ms = self._wall_ms()
        payload = msgpack.packb({
            "t": "stats", "room": room.name, "ts": now_ms,
            "viewers": self.viewers(room), "skus": room.state.stats(now_ms),
        })
        return ws_binary_frame(payload)

    def send_stats(self) -> None:
        """One stats frame per room with hosts, shared by its hosts."""
        for room in self.rooms.values():
            hosts = room.clients["host"]
            if hosts and room.loaded:
                frame = self._stats_frame(room)
                for client in hosts:
                    if client.lagging_since is None:
                        self._offer(client, frame)
        self.metrics.lagging.set(len(self.lagging))

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            await self.report_viewers()
            self.send_stats()

    # -- slow clients --------------------------------------------------------------

    def sweep(self) -> None:
        """Resume drained clients with a snapshot; close those stuck too long."""
        if not self.lagging:
            return
        now = self.now()
        low_water = self.config.send_buffer_limit // 2
        closes = self.config.closes_per_sweep
        for client in list(self.lagging):
            since = client.lagging_since
            if since is None:
                self.lagging.discard(client)
            elif client.buffered() <= low_water:
                client.lagging_since = None
                self.lagging.discard(client)
                room = self.rooms.get(client.room)
                if room is not None:  # a lagging client is a member: leave() ends both
                    room.live[client.audience].add(client)
                    if room.loaded:
                        self._send_snapshot(room, client)
            elif now - since > self.config.slow_client_timeout and closes > 0:
                closes -= 1
                self.lagging.discard(client)
                self.metrics.client_closes.labels("slow_client").inc()
                client.close(CloseCode.SLOW_CLIENT, "slow client: send buffer not draining")
        self.metrics.lagging.set(len(self.lagging))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            self.sweep()
            self.pace()

    # -- falling behind --------------------------------------------------------------

    def pace(self) -> None:
        """Stretch or restore every room's interval as the throttle judges."""
        stretch = self.throttle.tick(self.now())
        self.metrics.ingest_lag.set(self.throttle.lag)
        if stretch is None:
            return
        self.metrics.interval_stretch.set(stretch)
        fields = {"stretch": round(stretch, 2), "lag_ms": round(self.throttle.lag * 1000, 1)}
        if stretch > 1:
            # Screens now update less often than configured: the node is short of CPU.
            log.warning("hub.interval_stretched", extra={"fields": fields})
        else:
            log.info("hub.interval_restored", extra={"fields": fields})
        for room in self.rooms.values():
            room.pacer.stretch = stretch
