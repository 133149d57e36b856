"""A pipelined publisher: the real Lua script (``gateway/stock.lua``) over raw RESP.

Why not :class:`clients.publisher.Publisher`: it awaits one round trip per
call, and redis-py spends tens of microseconds of Python per command; 20,000
updates/s would need most of the load generator's core.  This speaks RESP on
an asyncio Protocol with hiredis parsing the replies, pre-encodes each SKU's
``EVALSHA`` once, and writes a whole tick's commands in one ``write``.  Redis
runs exactly the script the SDK runs (same keys, same arguments), so what the
gateway receives is what production publishers send.

``spublish`` mode bypasses the script and publishes valid records straight to
the room's channel: only for ``ingest``, to find the gateway's limit when
Redis itself (one core, running the script) is slower than the gateway.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import hiredis
import msgpack

from gateway.brokers.resp import encode_command as resp
from gateway.protocol import channel, epoch_key, stock_key
from gateway.stock import LUA_SCRIPT

#: Far above anything a run sells, so a SKU never sells out (a tier change flushes at once).
START_QTY = 1_000_000_000


class Resp(asyncio.Protocol):
    """One pipelined Redis connection; replies are matched to commands in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        #: Per command in flight: a SKU (the reply's version is recorded) or a Future.
        self.waiting: deque[Any] = deque()
        self.on_reply: Any = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        while self.waiting:
            item = self.waiting.popleft()
            if isinstance(item, asyncio.Future) and not item.done():
                item.set_exception(ConnectionError("redis connection lost"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        gets = self.reader.gets
        waiting = self.waiting
        on_reply = self.on_reply
        while (reply := gets()) is not False:
            item = waiting.popleft()
            if isinstance(item, asyncio.Future):
                if not item.done():
                    item.set_result(reply)
            else:
                on_reply(item, reply)

    async def call(self, *args: bytes | str | int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(resp(*args))  # type: ignore[union-attr]
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            raise RuntimeError(f"redis: {reply}")
        return reply


async def open_resp(url: str) -> Resp:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Resp, parts.hostname or "127.0.0.1", parts.port or 6379)
    db = (parts.path or "/0").lstrip("/") or "0"
    if db != "0":
        await proto.call("SELECT", db)
    return proto


class StockPublisher:
    """Drives stock changes into one room at a fixed rate, as fast as possible, or in a closed loop."""

    def __init__(self, conn: Resp, room: str, skus: Sequence[str], *, mode: str = "script") -> None:
        if mode not in ("script", "spublish"):
            raise ValueError("mode is script or spublish")
        self.conn = conn
        self.room = room
        self.skus = list(skus)
        self.mode = mode
        self.sha = b""
        self.sent = 0
        self.ok = 0
        self.refused = 0
        self.errors = 0
        self.skipped = 0
        #: The last version Redis confirmed per SKU: what every client must end up with.
        self.versions: dict[str, int] = {}
        #: Wall-clock ms of every write of updates (one per tick), for staleness.
        self.sent_at = array("d")
        self._cmds: list[bytes] = []
        self._next = 0
        self._below: asyncio.Event = asyncio.Event()
        self._below_mark = -1
        conn.on_reply = self._reply

    @property
    def inflight(self) -> int:
        return len(self.conn.waiting)

    async def prepare(self) -> None:
        """Load the script and set every SKU to a large stock (their first publish)."""
        self.sha = await self.conn.call("SCRIPT", "LOAD", LUA_SCRIPT)
        if isinstance(self.sha, str):
            self.sha = self.sha.encode()
        for sku in self.skus:
            status, _qty, ver, detail = await self.conn.call(*self._args("set", sku, START_QTY))
            if status != b"ok":
                raise RuntimeError(f"seeding {sku}: {status!r} {detail!r}")
            self.versions[sku] = int(ver)
        # One sale of one unit: the commonest real update, never a tier change at this stock.
        self._cmds = [resp(*self._args("adjust", sku, -1)) for sku in self.skus]

    def _args(self, op: str, sku: str, amount: int) -> tuple[bytes | str | int, ...]:
        room = self.room
        return ("EVALSHA", self.sha, 3, stock_key(room), channel(room), epoch_key(room),
                op, sku, amount, b"", b"", b"")

    # -- replies ----------------------------------------------------------------------

    def _reply(self, sku: str, reply: Any) -> None:
        if isinstance(reply, list):
            if reply[0] == b"ok":
                self.ok += 1
                self.versions[sku] = reply[2]
            else:
                self.refused += 1
        elif isinstance(reply, int):  # SPUBLISH: receivers
            self.ok += 1
        else:
            self.errors += 1
        if len(self.conn.waiting) <= self._below_mark:
            self._below_mark = -1
            self._below.set()

    async def _drained_to(self, mark: int) -> None:
        if self.inflight <= mark:
            return
        self._below.clear()
        self._below_mark = mark
        await self._below.wait()

    # -- sending ----------------------------------------------------------------------

    def publish(self, n: int) -> None:
        """Write ``n`` updates (round-robin over the SKUs) in one write."""
        if n <= 0:
            return
        skus = self.skus
        k = len(skus)
        start = self._next
        self._next = (start + n) % k
        order = [skus[(start + i) % k] for i in range(n)]
        if self.mode == "script":
            cmds = self._cmds
            payload = b"".join(cmds[(start + i) % k] for i in range(n))
        else:
            payload = self._spublish(order)
        self.conn.waiting.extend(order)
        self.sent += n
        self.sent_at.append(time.time() * 1000)
        self.conn.transport.write(payload)  # type: ignore[union-attr]

    def first_sent_after(self, ts_ms: float) -> float | None:
        """When the first update newer than ``ts_ms`` was sent (to the tick), or None.

        A client whose newest item carries ``ts_ms`` has been out of date
        since then: that is its staleness, however long the quiet spell
        before was.  Resolution is one publishing tick (5 ms).
        """
        index = bisect.bisect_right(self.sent_at, ts_ms)
        return self.sent_at[index] if index < len(self.sent_at) else None

    def _spublish(self, order: list[str]) -> bytes:
        now = time.time_ns() // 1_000_000
        name = channel(self.room).encode()
        head = b"*3\r\n$8\r\nSPUBLISH\r\n$%d\r\n%s\r\n" % (len(name), name)
        out = []
        versions = self.versions
        for sku in order:
            ver = versions[sku] = versions[sku] + 1
            record = msgpack.packb({"sku": sku, "qty": START_QTY - ver, "ver": ver, "ts": now})
            out.append(head + b"$%d\r\n%s\r\n" % (len(record), record))
        return b"".join(out)

    async def marker(self) -> tuple[str, int, int]:
        """Publish the final update (after everything sent so far); returns (sku, ver, sent_ms).

        Clients are on the final state once they hold this version of this SKU.
        """
        sku = self.skus[0]
        self.sent_at.append(time.time() * 1000)
        if self.mode == "script":
            reply = await self.conn.call(*self._args("adjust", sku, -1))
            if reply[0] != b"ok":
                raise RuntimeError(f"marker refused: {reply!r}")
            ver = int(reply[2])
        else:
            future = asyncio.get_running_loop().create_future()
            self.conn.waiting.append(future)
            self.conn.transport.write(self._spublish([sku]))  # type: ignore[union-attr]
            await future
            ver = self.versions[sku]
        self.versions[sku] = ver
        self.sent += 1
        self.ok += 1
        return sku, ver, int(time.time() * 1000)

    async def drain(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._drained_to(0), timeout)

    async def at_rate(self, rate: float, duration: float, *, max_inflight: int = 20_000,
                      tick: float = 0.005) -> dict[str, Any]:
        """Open loop: ``rate`` updates/s for ``duration`` s, a tick's worth per write.

        If Redis falls behind by more than ``max_inflight`` replies, the
        updates of that tick are skipped (and counted), not queued: the
        offered load stays what was asked, never a catch-up burst.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent0 = self.sent
        skipped0 = self.skipped
        due_total = 0
        while True:
            now = loop.time()
            elapsed = now - start
            if elapsed >= duration:
                break
            due = min(int(elapsed * rate) + 1, int(duration * rate + 0.5))
            n = due - due_total
            if n > 0:
                due_total = due
                room = max_inflight - self.inflight
                if n > room:
                    self.skipped += n - max(room, 0)
                    n = max(room, 0)
                self.publish(n)
            await asyncio.sleep(tick)
        elapsed = loop.time() - start
        return {"offered_per_s": rate, "sent": self.sent - sent0, "skipped": self.skipped - skipped0,
                "seconds": round(elapsed, 3), "sent_per_s": round((self.sent - sent0) / elapsed, 1)}

    async def flat_out(self, duration: float, *, window: int = 2000,
                       ahead: Callable[[], int] | None = None, max_ahead: int = 50_000) -> dict[str, Any]:
        """As fast as Redis answers: keep ``window`` commands in flight for ``duration`` s.

        ``ahead`` (optional) says how many published updates the consumer has
        not processed yet; above ``max_ahead`` publishing pauses.  Without it a
        publisher that outruns the gateway piles up an unbounded backlog in
        Redis, and the run's end waits for minutes of draining.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        ok0 = self.ok
        sent0 = self.sent
        paused = 0
        while loop.time() - start < duration:
            if ahead is not None and ahead() > max_ahead:
                paused += 1
                await asyncio.sleep(0.005)
                continue
            self.publish(window - self.inflight)
            await self._drained_to(window // 2)
        elapsed = loop.time() - start
        return {"sent": self.sent - sent0, "seconds": round(elapsed, 3),
                "confirmed_per_s": round((self.ok - ok0) / elapsed, 1), "paused_ticks": paused}

    async def closed_loop(self, fleet: Any, clients: int, duration: float, *, window: int = 8,
                          stall: float = 2.0) -> dict[str, Any]:
        """Publish as fast as the server delivers: at most ``window`` updates not yet delivered.

        Update *p* is published only once the fleet has received
        ``(p - window) * clients`` frames beyond its starting count: the server
        always has work queued (it never idles waiting for the publisher), yet
        nothing queues without bound anywhere.  This is the maximum
        *sustainable* flush rate: what the slower of server and load
        generator can carry.  A stalled wait (clients lost, frames skipped)
        gives up after ``stall`` seconds and publishes anyway, counted.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        base = fleet.frames
        published = 0
        stalls = 0
        while loop.time() - start < duration:
            need = base + (published - window + 1) * clients
            if fleet.frames < need:
                fleet.wake.clear()
                fleet.wake_at = need
                if fleet.frames < need:
                    try:
                        await asyncio.wait_for(fleet.wake.wait(), stall)
                    except TimeoutError:
                        stalls += 1
                        fleet.wake_at = float("inf")
                        base = fleet.frames - (published - window + 1) * clients
            self.publish(1)
            published += 1
        elapsed = loop.time() - start
        return {"published": published, "seconds": round(elapsed, 3),
                "published_per_s": round(published / elapsed, 1), "window": window, "stalls": stalls}
