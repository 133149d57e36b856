"""One WebSocket connection: its limits, its admission, and the screen the hub writes to.

:class:`StockwireConnection` is the ``websockets`` connection with the limits its
automatic replies would otherwise bypass; :class:`WsClient` is what the hub
sees of it — pre-built frame bytes appended straight to the transport, the
same bytes object for every client of a room and audience.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter as MetricCounter
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from gateway.auth import Grant
from gateway.limits import ConnectionCounts, TokenBucket
from gateway.protocol import Audience, CloseCode

OPEN = State.OPEN
#: An unmasked, empty WebSocket ping (RFC 6455 §5.5.2): built once, written as is.
PING_FRAME = b"\x89\x00"


def write_cap(send_buffer_limit: int) -> int:
    """Bytes of websockets' own replies a peer may leave unread before it is cut off.

    Well above the slow-client bound, which frames respect and replies do not:
    an honest client never gets near it, since the gateway writes replies only
    to what the client sends, and that is rate limited.
    """
    return max(4 * send_buffer_limit, 1 << 20)


@dataclass(slots=True)
class Admission:
    """What the handshake decided, kept on the connection until it is gone.

    The connection slot is taken at the handshake, not when the handler
    starts, so concurrent handshakes from one address cannot all pass the
    per-address cap; it is released when the TCP connection goes, whether or
    not the upgrade ever happened.
    """

    address: str
    grant: Grant | None
    counts: ConnectionCounts
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.counts.remove(self.address)


class StockwireConnection(ServerConnection):
    """A server connection that enforces the limits websockets' automatic replies bypass.

    It notes when the peer last sent anything (for :mod:`gateway.keepalive`)
    and carries its :class:`Admission`.  WebSocket pings count against the
    client's message rate like data frames do, and a peer that makes the
    gateway queue more than ``write_cap`` bytes of pongs without reading them
    is cut off: otherwise a client that floods pings and never reads grows
    the gateway's memory without bound.

    It also says, once, when the connection stops being open (``on_close``):
    every close frame websockets writes, ours or its reply to the peer's,
    leaves through :meth:`send_data` right after the protocol changes state,
    with no await in between, and a dropped connection ends in
    :meth:`connection_lost`.  So the hub's writers can keep a flag on their
    own object instead of asking the protocol before every frame — a saving
    of one object visit per client per flush.
    """

    last_rx = 0.0
    on_close: Callable[[], None] | None = None

    def __init__(self, *args: Any, message_rate: float, message_burst: int, write_cap: int,
                 closes: MetricCounter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.admission: Admission | None = None
        self.messages = TokenBucket(message_rate, message_burst, time.monotonic())
        self.write_cap = write_cap
        self._closes = closes
        self._refused: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        transport = self.transport
        queued = transport.get_write_buffer_size()
        super().data_received(data)
        # Only websockets' own replies are written from here, never frames.
        after = transport.get_write_buffer_size()
        if after > self.write_cap and after > queued and not transport.is_closing():
            self._closes.labels("control_flood").inc()
            transport.abort()

    def process_event(self, event: Event) -> None:
        if (isinstance(event, Frame) and event.opcode is Opcode.PING and self.protocol.state is OPEN
                and not self.messages.take(time.monotonic())):
            self.refuse("too_many_messages", CloseCode.TOO_MANY_MESSAGES, "too many messages")
        super().process_event(event)

    def send_data(self) -> None:
        super().send_data()
        if self.on_close is not None and self.protocol.state is not OPEN:
            self._closed()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._closed()
        if self.admission is not None:
            self.admission.release()

    def _closed(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()

    def refuse(self, reason: str, code: int, text: str) -> asyncio.Task[None]:
        """Close for breaking a limit; counted once, however often the limit is broken."""
        if self._refused is None:
            self._closes.labels(reason).inc()
            self._refused = self.loop.create_task(self.close(code, text))
        return self._refused


class WsClient:
    """One connected screen, as the hub sees it.

    ``open`` turns false, through the connection's ``on_close``, the moment
    websockets writes a close frame or loses the connection: nothing may
    follow a close frame (RFC 6455 §5.5.1), and the hub keeps writing to a
    closing client until its handler ends.
    """

    __slots__ = ("_closing", "audience", "lagging_since", "open", "pinged_at", "room", "transport", "ws")

    def __init__(self, ws: StockwireConnection, room: str, audience: Audience) -> None:
        self.ws = ws
        self.transport = ws.transport
        self.room = room
        self.audience: Audience = audience
        self.lagging_since: float | None = None
        self.pinged_at = 0.0
        self._closing: asyncio.Task[None] | None = None
        self.open = ws.protocol.state is OPEN
        if self.open:
            ws.on_close = self._closed

    def _closed(self) -> None:
        self.open = False

    @property
    def last_rx(self) -> float:
        return getattr(self.ws, "last_rx", 0.0)

    def write(self, frame: bytes) -> None:
        if self.open:
            self.transport.write(frame)

    def offer(self, frame: bytes, limit: int) -> bool:
        transport = self.transport
        if transport.get_write_buffer_size() > limit:
            return False
        if self.open:
            transport.write(frame)
        return True

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self.ws.close(code, reason))
