"""A fleet of minimal WebSocket clients on raw asyncio Protocols.

Why not one ``websockets`` client per connection: each of those is a protocol
object, a reader task, a queue and a decode per frame — more CPU per frame
than the gateway spends writing it, so the load generator would saturate
first and the benchmark would measure itself.  Here a connection is one
small Protocol object: after the HTTP upgrade it walks the server's frames
(unmasked, RFC 6455), counts them, keeps a reference to the last one and its
arrival time, and answers pings.  Only *sampler* connections (every
``sample_every``-th) decode their frames with msgpack, to measure latency
(receive time minus the item's ``ts``), check ``seq`` continuity and track every
SKU's version.  The rest are decoded lazily and shared: every connection got
the same bytes, so a content-keyed cache decodes each distinct frame once
when the staleness sampler or the final-state check looks at it.

Connections are spread over several loopback source addresses
(127.0.0.2, 127.0.0.3, …) via ``local_addr``: binding a source address
reserves an ephemeral port on that address only, so N addresses give N times
the ~28,000 ports of one.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import math
import os
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

#: Client → server frames must be masked; an all-zero key leaves the payload as is.
_PONG = 0x8A
_CLOSE = 0x88
_ZERO_MASK = b"\x00\x00\x00\x00"
#: Linux <netinet/in.h>; not exported by Python's socket module.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _masked(opcode: int, payload: bytes) -> bytes:
    return bytes((opcode, 0x80 | len(payload))) + _ZERO_MASK + payload


@dataclass(slots=True, frozen=True)
class FrameInfo:
    """What the checks need from one frame: its sequence, newest item ``ts``, versions."""

    kind: str
    seq: int
    max_ts: int
    versions: dict[str, int]


def source_address(index: int) -> str:
    """127.0.0.2, 127.0.0.3, …: the whole of 127/8 is local on Linux."""
    return str(ipaddress.IPv4Address(0x7F000002 + index))


class Conn(asyncio.Protocol):
    """One connection: upgrade, then count frames; a sampler also decodes them."""

    __slots__ = (
        "buf",
        "close_code",
        "final_ms",
        "fleet",
        "frames",
        "gaps",
        "items",
        "joined_at",
        "last",
        "last_ms",
        "open",
        "ready",
        "sampler",
        "seq",
        "started_at",
        "transport",
        "versions",
    )

    def __init__(self, fleet: Fleet, sampler: bool) -> None:
        self.fleet = fleet
        self.sampler = sampler
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.frames = 0
        self.items = 0
        self.last: bytes | None = None
        self.last_ms = 0.0
        self.seq: int | None = None
        self.gaps = 0
        self.versions: dict[str, int] = {}
        self.ready: asyncio.Future[None] | None = None
        self.started_at = 0.0
        self.joined_at = 0.0
        self.final_ms: float | None = None
        self.close_code: int | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.fleet.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fleet.lost += 1
        self.open = False
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the snapshot ({exc or 'eof'})"))

    def data_received(self, data: bytes) -> None:
        now_ms = time.time() * 1000.0
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                status = data[9:12].decode("ascii", "replace")
                self.fleet.errors[f"http {status}"] += 1
                if self.ready is not None and not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"upgrade refused: {status}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.open = True
            data = data[end + 4:]
        n = len(data)
        pos = 0
        count = 0
        last_start = last_end = 0
        sampler = self.sampler
        while n - pos >= 2:
            length = data[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = data[pos] & 0x0F
            if opcode == 2:
                count += 1
                last_start = start
                last_end = end
                if sampler:
                    self._decode(data[start:end], now_ms)
            elif opcode == 9:
                self.transport.write(_masked(_PONG, data[start:end]))  # type: ignore[union-attr]
            elif opcode == 8:
                payload = data[start:end]
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.fleet.errors[f"closed {self.close_code}"] += 1
                self.transport.write(_masked(_CLOSE, payload[:2]))  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
                return
            pos = end
        if pos < n:
            self.buf = data[pos:]
        if count:
            fleet = self.fleet
            self.frames += count
            self.last = data[last_start:last_end]
            self.last_ms = now_ms
            fleet.frames += count
            fleet.bytes += pos
            if self.ready is not None:
                self.joined_at = time.perf_counter()
                if not self.ready.done():
                    self.ready.set_result(None)
                self.ready = None
            if fleet.frames >= fleet.wake_at:
                fleet.wake_at = float("inf")
                fleet.wake.set()

    # -- sampling ------------------------------------------------------------------------

    def _decode(self, frame: bytes, now_ms: float) -> None:
        msg = msgpack.unpackb(frame, raw=False)
        kind = msg.get("t")
        items = msg.get("items") or ()
        seq = msg.get("seq")
        versions = self.versions
        if kind == "update":
            if self.seq is not None and seq != self.seq + 1:
                self.gaps += 1
            self.seq = seq
            self.items += len(items)
            fleet = self.fleet
            fleet.sample_frames += 1
            fleet.sample_items += len(items)
            record = fleet.recording
            for item in items:
                sku = item["sku"]
                if item["ver"] > versions.get(sku, 0):
                    versions[sku] = item["ver"]
                if record:
                    fleet.lat_ms.append(now_ms - item["ts"])
                    fleet.lat_at.append(now_ms)
        elif kind == "snapshot":
            self.seq = seq
            for item in items:
                sku = item["sku"]
                if item["ver"] > versions.get(sku, 0):
                    versions[sku] = item["ver"]


class Fleet:
    """Every connection of one load generator, and the counters they share.

    Counters are plain attributes bumped once per read, not per frame, so a
    read that carries eight queued frames costs about what one frame does.
    """

    def __init__(self, host: str, port: int, path: str, *, sample_every: int = 50,
                 per_address: int = 1000) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.sample_every = max(1, sample_every)
        self.per_address = max(1, per_address)
        key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.conns: list[Conn] = []
        self.frames = 0
        self.bytes = 0
        self.lost = 0
        self.errors: Counter[str] = Counter()
        self.sample_frames = 0
        self.sample_items = 0
        #: Latency samples (ms) and when they were received (epoch ms), while ``recording``.
        self.lat_ms = array("d")
        self.lat_at = array("d")
        self.recording = False
        #: The closed-loop publisher waits on ``wake`` until ``frames`` reaches ``wake_at``.
        self.wake = asyncio.Event()
        self.wake_at = float("inf")
        self._cache: dict[bytes, FrameInfo] = {}

    @property
    def samplers(self) -> list[Conn]:
        return [c for c in self.conns if c.sampler]

    def open_conns(self) -> list[Conn]:
        return [c for c in self.conns if c.open]

    # -- joining ---------------------------------------------------------------------------

    async def connect(self, n: int, *, concurrency: int = 50, timeout: float = 30.0) -> dict[str, Any]:
        """Open ``n`` more connections; each counts as joined when its snapshot arrives.

        Returns the join figures: connections/s from the first connect to the
        last snapshot, per-connection join time percentiles, failures.
        """
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        first = len(self.conns)
        conns = [Conn(self, (first + i) % self.sample_every == 0) for i in range(n)]
        self.conns.extend(conns)
        failures: Counter[str] = Counter()

        async def one(index: int, conn: Conn) -> None:
            async with sem:
                ready = conn.ready = loop.create_future()
                conn.started_at = time.perf_counter()
                address = source_address((first + index) // self.per_address)
                try:
                    await asyncio.wait_for(self._open(loop, conn, address), timeout)
                    await asyncio.wait_for(ready, timeout)  # conn.ready is cleared once it arrived
                except (OSError, ConnectionError, TimeoutError) as exc:
                    detail = f": {exc}" if isinstance(exc, ConnectionError) else ""
                    failures[type(exc).__name__ + detail] += 1
                    conn.ready = None
                    if conn.transport is not None:
                        conn.transport.abort()

        started = time.perf_counter()
        await asyncio.gather(*(one(i, c) for i, c in enumerate(conns)))
        joined = [c for c in conns if c.joined_at]
        times = sorted((c.joined_at - c.started_at) * 1000 for c in joined)
        span = (max(c.joined_at for c in joined) - started) if joined else 0.0
        return {
            "requested": n,
            "joined": len(joined),
            "failed": n - len(joined),
            "failures": dict(failures.most_common(5)),
            "seconds": round(span, 3),
            "per_s": round(len(joined) / span, 1) if span > 0 else 0.0,
            "join_ms": percentiles(times),
            "concurrency": concurrency,
            "source_addresses": (first + n - 1) // self.per_address + 1,
        }

    async def _open(self, loop: asyncio.AbstractEventLoop, conn: Conn, address: str) -> None:
        """Connect from ``address`` (what ``local_addr=(address, 0)`` does, minus its cost).

        A plain bind to port 0 makes the kernel pick the port at bind time,
        searching the whole ephemeral range for one that no socket on that
        address holds; with thousands bound that search becomes the load
        generator's main cost (system time).  IP_BIND_ADDRESS_NO_PORT defers
        the choice to connect(), where the full 4-tuple makes it cheap.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((address, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (self.host, self.port))
            await loop.create_connection(lambda: conn, sock=sock)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()

    # -- reading frames lazily ---------------------------------------------------------------

    def info(self, frame: bytes) -> FrameInfo:
        """Decode a frame once per distinct content: every client holds the same bytes."""
        found = self._cache.get(frame)
        if found is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            msg = msgpack.unpackb(frame, raw=False)
            items = msg.get("items") or ()
            versions = {i["sku"]: i["ver"] for i in items}
            found = FrameInfo(str(msg.get("t")), int(msg.get("seq") or 0),
                              max((int(i["ts"]) for i in items), default=0), versions)
            self._cache[frame] = found
        return found

    def staleness(self, now_ms: float, first_sent_after: Callable[[float], float | None]) -> array[float]:
        """Per client: for how long (ms) a newer state than the newest it holds has been published.

        0 when the client holds the newest state.  ``first_sent_after(ts)``
        is the publisher's time of the first update newer than ``ts``.
        """
        out = array("f")
        info = self.info
        lags: dict[int, float] = {}  # clients share frames, so a handful of distinct answers per tick
        for conn in self.conns:
            if conn.open and conn.last is not None:
                newest = info(conn.last).max_ts
                lag = lags.get(newest)
                if lag is None:
                    first = first_sent_after(newest)
                    lag = lags[newest] = max(0.0, now_ms - first) if first is not None else 0.0
                out.append(lag)
        return out

    async def wait_final(self, sku: str, ver: int, timeout: float) -> list[Conn]:
        """Wait until every open client's last frame carries ``sku`` at ``ver`` or later.

        Nothing is published after the marker, so the frame that carries it is
        each client's last, and its arrival time is exact.  Returns the
        clients that did not get there in time.
        """
        pending = [c for c in self.conns if c.open]
        deadline = time.monotonic() + timeout
        while pending:
            still = []
            for conn in pending:
                last = conn.last
                if last is not None and self.info(last).versions.get(sku, 0) >= ver:
                    conn.final_ms = conn.last_ms
                elif conn.open:
                    still.append(conn)
            pending = still
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        return pending


def percentiles(values: Any, points: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:
    """p50/p99/p99.9/max of a sequence (sorted here if not already); empty → {}."""
    data = sorted(values)
    if not data:
        return {}
    out = {}
    for p in points:
        index = min(len(data) - 1, max(0, math.ceil(p / 100 * len(data)) - 1))  # nearest rank
        out[f"p{p:g}".replace(".", "_")] = round(float(data[index]), 2)
    out["max"] = round(float(data[-1]), 2)
    out["count"] = len(data)
    return out
