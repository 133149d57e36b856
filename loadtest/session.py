"""One screen's websocket to one room, for gevent.

Locust has no plain-websocket user, and the project's async client cannot run
inside Locust's gevent loop.  ``websocket-client`` is a blocking library, so
after Locust's gevent monkey-patching its socket calls yield to other
greenlets; each session reads in its own greenlet and keeps the room's state
in the same :class:`clients.view.RoomView` the SDK uses, so the suite judges
the gateway by the protocol's rules rather than by a second implementation.

:meth:`RoomSession.handle` is the whole per-frame logic with no I/O: it takes
the bytes and the receive time, so the checks are unit-tested without sockets.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import gevent
import msgpack
import websocket
from gevent.lock import Semaphore

from clients.view import RoomView, Snapshot, Update, now_ms
from loadtest import report
from loadtest.report import Reporter

#: The keys of a viewer item, exactly (docs/protocol.md §6); anything more leaks host data.
VIEWER_KEYS = frozenset({"sku", "qty", "st", "ver", "ts"})
#: Viewer snapshot items may also carry the display name, so badges can be labelled.
VIEWER_SNAPSHOT_KEYS = VIEWER_KEYS | {"name"}
_RESYNC = msgpack.packb({"t": "resync"})
_ids = itertools.count(1)


def room_url(base: str, room: str, *, role: str, token: str | None) -> str:
    query: dict[str, str] = {}
    if role != "viewer":
        query["role"] = role
    if token:
        query["token"] = token
    url = f"{base.rstrip('/')}/ws/{room}"
    return f"{url}?{urlencode(query)}" if query else url


class RoomSession:
    """A viewer's or host's connection: connect, read, check, report.

    ``required`` lists the record fields every host item must carry (the
    publisher set them); ``platforms_sum`` asks hosts to check that the
    per-platform quantities add up to ``qty`` (true when only platform sales
    change stock).
    """

    def __init__(self, base_url: str, room: str, reporter: Reporter, *, role: str = "viewer",
                 token: str | None = None, required: frozenset[str] = frozenset(),
                 platforms_sum: bool = False, connect_timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.room = room
        self.role = role
        self.token = token
        self.report = reporter
        self.required = required
        self.platforms_sum = platforms_sum
        self.connect_timeout = connect_timeout
        self.view = RoomView(room)
        #: Set before an intentional close, so the reader treats the close as expected.
        self.closing = False
        self.close_reason = ""
        self.updates = self.stats_frames = 0
        self.sold_out_seen = self.restock_seen = 0
        self._ws: websocket.WebSocket | None = None
        self._reader: gevent.Greenlet | None = None
        self._send_lock = Semaphore()
        self._snapshot_due_since: float | None = None
        self._pings: dict[int, float] = {}
        self._alerts: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return room_url(self.base_url, self.room, role=self.role, token=self.token)

    @property
    def is_host(self) -> bool:
        return self.role == "host"

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Open the websocket and start reading; raises on a refused handshake."""
        self.closing = False
        self.close_reason = ""
        self._pings.clear()
        self.view.expect_snapshot()
        ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True)
        started = time.perf_counter()
        try:
            ws.connect(self.url, timeout=self.connect_timeout)
        except Exception as exc:
            self.report.fail(report.CONNECT, _describe(exc), (time.perf_counter() - started) * 1000)
            ws.shutdown()
            raise
        self.report.ok(report.CONNECT, (time.perf_counter() - started) * 1000)
        ws.settimeout(None)
        self._ws = ws
        self._snapshot_due_since = time.perf_counter()
        self._reader = gevent.spawn(self._read, ws)

    def wait(self, timeout: float | None) -> bool:
        """Wait for the reader to end; True when it has (the connection is gone)."""
        if self._reader is None:
            return True
        self._reader.join(timeout)
        return self._reader.dead

    def close(self, *, intentional: bool = True) -> None:
        """Drop the connection.  Intentional (the user stops, the test ramps down)
        closes are never errors; a lost connection is cleaned up with ``intentional=False``."""
        if intentional:
            self.closing = True
        reader, self._reader = self._reader, None
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=True, timeout=1)
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=0.5)
            except Exception:  # the peer may already be gone; closing is best effort
                ws.shutdown()

    def ping(self) -> None:
        """An application ping; its pong times the gateway's round trip (clock-free)."""
        ident = next(_ids)
        self._pings[ident] = time.perf_counter()
        self._send(msgpack.packb({"t": "ping", "id": ident}))

    def _send(self, payload: bytes) -> None:
        ws = self._ws
        if ws is None:
            return
        with self._send_lock:
            try:
                ws.send_binary(payload)
            except Exception as exc:  # the reader sees the broken connection and reports it
                self.close_reason = self.close_reason or _describe(exc)

    def _read(self, ws: websocket.WebSocket) -> None:
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.close_reason = _close_text(data)
                    return
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    self.handle(data, now_ms())
                else:
                    self.report.fail(report.BAD_FRAME, f"opcode {opcode}: the gateway speaks binary only")
        except gevent.GreenletExit:
            raise
        except Exception as exc:
            if not self.closing:
                self.close_reason = self.close_reason or _describe(exc)

    # -- frames ---------------------------------------------------------------------------

    def handle(self, data: bytes, received_ms: int) -> None:
        """Check and apply one gateway frame; report what it showed."""
        try:
            frame = msgpack.unpackb(data)
        except Exception as exc:
            self.report.fail(report.BAD_FRAME, _describe(exc))
            return
        if not isinstance(frame, Mapping):
            self.report.fail(report.BAD_FRAME, f"a frame must be a map, got {type(frame).__name__}")
            return
        kind = frame.get("t")
        if kind == "pong":
            sent = self._pings.pop(frame.get("id"), None)  # type: ignore[arg-type]
            if sent is not None:
                self.report.ok(report.PING, (time.perf_counter() - sent) * 1000, len(data))
            return
        if kind == "stats":
            self.stats_frames += 1
            if not self.is_host:
                self.report.fail(report.VIEWER_EXTRA, "a viewer received a stats frame")
            elif isinstance(frame.get("ts"), int):
                self.report.ok(report.STATS, received_ms - frame["ts"], len(data))
        if kind in ("snapshot", "update"):
            self._check_items(frame)
        previous = self._held_qty(frame) if kind == "update" else {}
        stale_frames = self.view.stale_frames
        event = self.view.apply(frame, now_ms=received_ms)
        if self.view.stale_frames > stale_frames:
            self.report.fail(report.SEQ_BACKWARDS, f"{kind} seq {frame.get('seq')} after {self.view.seq}")
        if isinstance(event, Snapshot):
            self._on_snapshot(event, len(data))
        elif isinstance(event, Update):
            self._on_update(event, previous, len(data))
        if self.view.take_resync():
            self.report.ok(report.RESYNC, 0)
            self._send(_RESYNC)

    def _check_items(self, frame: Mapping[str, Any]) -> None:
        items = frame.get("items")
        if not isinstance(items, list):
            return
        same_epoch = frame.get("t") == "update" or frame.get("epoch") == self.view.epoch
        viewer_keys = VIEWER_KEYS if frame.get("t") == "update" else VIEWER_SNAPSHOT_KEYS
        for item in items:
            if not isinstance(item, Mapping) or not isinstance(item.get("sku"), str):
                continue
            held = self.view.items.get(item["sku"])
            ver = item.get("ver")
            if same_epoch and held is not None and isinstance(ver, int) and ver < held["ver"]:
                self.report.fail(report.BACKWARDS, f"{item['sku']}: ver {held['ver']} then {ver} "
                                                   f"in a {frame.get('t')}")
            qty = item.get("qty")
            if isinstance(qty, int) and (item.get("st") == "out") != (qty == 0):
                self.report.fail(report.STATUS_WRONG, f"{item['sku']}: st {item.get('st')!r} with qty {qty}")
            alert = item.get("alert")
            if isinstance(qty, int) and alert is not None and (alert == "out") != (qty == 0):
                self.report.fail(report.STATUS_WRONG, f"{item['sku']}: alert {alert!r} with qty {qty}")
            if self.is_host:
                for name in sorted(self.required - item.keys()):
                    self.report.fail(report.host_missing(name), f"{item['sku']} ver {ver}")
                platforms = item.get("platforms")
                if self.platforms_sum and isinstance(platforms, Mapping) and isinstance(qty, int) \
                        and sum(platforms.values()) != qty:
                    self.report.fail(report.PLATFORMS_SUM, f"{item['sku']}: {dict(platforms)} vs qty {qty}")
            elif extra := sorted(item.keys() - viewer_keys):
                self.report.fail(report.VIEWER_EXTRA, f"{item['sku']}: {', '.join(map(str, extra))}")

    def _held_qty(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        """The quantities held for the SKUs a frame carries, before it applies."""
        held: dict[str, Any] = {}
        items = frame.get("items")
        for item in items if isinstance(items, list) else ():
            sku = item.get("sku") if isinstance(item, Mapping) else None
            if isinstance(sku, str) and (current := self.view.items.get(sku)) is not None:
                held[sku] = current.get("qty")
        return held

    def _on_snapshot(self, event: Snapshot, length: int) -> None:
        if self._snapshot_due_since is not None:
            self.report.ok(report.SNAPSHOT, (time.perf_counter() - self._snapshot_due_since) * 1000, length)
            self._snapshot_due_since = None
        self._alerts = {sku: item.get("alert") for sku, item in self.view.items.items()}

    def _on_update(self, event: Update, previous: Mapping[str, Any], length: int) -> None:
        self.updates += 1
        for item in event.items:
            sku = item["sku"]
            latency = event.latencies_ms.get(sku)
            if latency is None:
                continue
            self.report.ok(report.UPDATE, latency, length)
            before, qty = previous.get(sku), item.get("qty")
            if isinstance(qty, int) and isinstance(before, int):
                if qty == 0 and before > 0:
                    self.sold_out_seen += 1
                    self.report.ok(report.SOLD_OUT_SEEN, latency)
                elif qty > before:
                    self.restock_seen += 1
                    self.report.ok(report.RESTOCK_SEEN, latency)
            if self.is_host and "alert" in item and item["alert"] != self._alerts.get(sku):
                self._alerts[sku] = item["alert"]
                self.report.ok(report.alert_seen(str(item["alert"])), latency)


def _describe(exc: BaseException) -> str:
    """One stable line per kind of problem, so Locust's error table groups them."""
    status = getattr(exc, "status_code", None)
    if status:  # a refused handshake: the gateway's one-line reason (docs/protocol.md §5.2)
        body = getattr(exc, "resp_body", None) or b""
        reason = body.decode("utf-8", "replace").strip() if isinstance(body, bytes) else str(body).strip()
        return f"HTTP {status}" + (f": {reason}" if reason else "")
    return f"{type(exc).__name__}: {str(exc) or 'no detail'}"


def _close_text(data: bytes) -> str:
    if len(data) >= 2:
        (code,) = struct.unpack("!H", data[:2])
        reason = data[2:].decode("utf-8", "replace")
        return f"close {code}" + (f" {reason}" if reason else "")
    return "close without a code"
