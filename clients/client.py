"""Async Python client for the stockwire gateway.

Two layers, so the protocol rules can be tested without sockets:

* :class:`RoomView` holds one room's state and applies decoded frames.  It does
  no I/O and reads no clock unless asked to, so every rule (snapshot replaces,
  versions only move forward, sequence gaps ask for a resync) is a plain call.
* :class:`StockClient` owns the websocket: it reconnects forever with
  full-jitter backoff, feeds frames to its view, sends the resync requests the
  view asks for, and fans events out to callbacks and an async iterator.

State always lives in the view (``client.items``); events are notifications
about changes to it.  A consumer that falls behind may miss events, never
state.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, cast
from urllib.parse import urlencode

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from clients.view import Event, RoomView, Snapshot, Update, now_ms
from gateway.protocol import AUDIENCES, Audience, CloseCode, valid_room

__all__ = [
    "PERMANENT_CLOSE_CODES", "ClientClosed", "Event", "PermanentError", "RoomView", "Snapshot",
    "StockClient", "StockClientError", "Update", "backoff_delay", "build_url", "now_ms",
    "retry_after_seconds",
]

log = logging.getLogger("stockwire.client")

#: Close codes that will not change by trying again (docs/protocol.md §9):
#: reconnecting would only hammer the gateway with a request it has already
#: refused.  1009 is a frame over the limit, either one of ours or one of the
#: gateway's over ``max_frame_bytes``; the same frame would be too big again.
PERMANENT_CLOSE_CODES: Final = frozenset(int(code) for code in (
    CloseCode.MESSAGE_TOO_BIG, CloseCode.BAD_FRAME, CloseCode.TOKEN_EXPIRED, CloseCode.FORBIDDEN,
    CloseCode.UNKNOWN_ROOM,
))
#: Handshake refusals that say when to come back (protocol §5.2).
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
#: A longer Retry-After is taken as this: a misconfigured proxy must not park
#: a screen for hours.
MAX_RETRY_AFTER: Final = 300.0
#: Snapshots of big rooms for hosts can exceed websockets' 1 MiB default.
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
_RESYNC: Final = msgpack.packb({"t": "resync"})
#: Caps the backoff exponent so ``2**attempt`` can never overflow a float.
_MAX_EXPONENT: Final = 32




def build_url(url: str, room: str, *, role: Audience = "viewer", token: str | None = None) -> str:
    """The websocket URL for a room; ``url`` is the gateway base (``ws://host:port``)."""
    if not valid_room(room):
        raise ValueError(f"invalid room name: {room!r}")
    if role not in AUDIENCES:
        raise ValueError(f"role must be one of {AUDIENCES}, not {role!r}")
    query: dict[str, str] = {"role": role}
    if token is not None:
        query["token"] = token
    return f"{url.rstrip('/')}/ws/{room}?{urlencode(query)}"


def backoff_delay(attempt: int, initial: float, maximum: float,
                  rng: random.Random | None = None) -> float:
    """Full-jitter backoff: spreads a crowd of clients that lost the same gateway
    across the whole window, so a restart is not followed by a stampede."""
    ceiling = min(maximum, initial * 2 ** min(attempt, _MAX_EXPONENT))
    return (rng or random).uniform(0, ceiling)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks us to wait: delta-seconds or an
    HTTP date; None when absent or unreadable.  Capped at :data:`MAX_RETRY_AFTER`."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # HTTP dates are GMT; one without a zone is not one
        seconds = max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return min(seconds, MAX_RETRY_AFTER)

# -- the I/O client --------------------------------------------------------------

Callback = Callable[[Any], Awaitable[None] | None]


class StockClientError(Exception):
    """Base class for errors the client reports."""


class PermanentError(StockClientError):
    """The gateway refused us for a reason retrying cannot fix (bad room, bad
    frame, auth); the client has stopped."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"gateway closed the connection with {code}: {reason or 'no reason'}")
        self.code = code
        self.reason = reason


class ClientClosed(StockClientError):
    """The client was closed before the awaited condition held."""


_END: Final = object()


class StockClient:
    """A live, self-healing subscription to one room.

    Use ``async with StockClient(url, room) as client:``; read state from
    ``client.items`` and get notified through ``on_snapshot``/``on_update``
    (plain or async callables, awaited in order on the receive path, so keep
    them quick) or ``async for event in client``.  The iterator reads a bounded
    queue that drops the *oldest* events when the consumer lags: it is for
    notifications, and ``client.items`` is always current.  Use one iterating
    consumer per client.

    The client reconnects on its own until :meth:`close`, except when the
    gateway closes with a permanent code (:data:`PERMANENT_CLOSE_CODES`): then it
    stops and :class:`PermanentError` is raised from the iterator,
    :meth:`wait_for` and :meth:`wait_closed`, and kept in :attr:`error`.
    Failed handshakes (refused, timed out, HTTP 5xx/429) are retried; HTTP 401
    and 403 (bad, expired or wrong-room token) are permanent.  A 429 or 503
    with ``Retry-After`` is not retried on that gateway before the time it
    names: the wait is ``Retry-After`` plus the usual jittered backoff, so a
    crowd refused together does not come back together.

    ``url`` may be a list of gateway base URLs: each reconnect moves on to the
    next one, so the clients of a node that died or is draining spread over
    the others even without a load balancer in front.
    """

    def __init__(
        self, url: str | Sequence[str], room: str, *, role: Audience = "viewer",
        token: str | None = None,
        backoff_initial: float = 0.2, backoff_max: float = 10.0, open_timeout: float = 5.0,
        on_snapshot: Callback | None = None, on_update: Callback | None = None,
        queue_size: int = 1024, max_frame_bytes: int | None = DEFAULT_MAX_FRAME_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        self._bases = [url] if isinstance(url, str) else list(url)
        if not self._bases:
            raise ValueError("at least one gateway URL is needed")
        self._base_index = 0
        self._token = token
        for base in self._bases:
            try:
                parse_uri(build_url(base, room, role=role, token=token))
            except InvalidURI as exc:
                raise ValueError(str(exc)) from None
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.room = room
        self.role: Audience = role
        self.view = RoomView(room)
        self.on_snapshot = on_snapshot
        self.on_update = on_update
        self._backoff = (backoff_initial, backoff_max)
        self._open_timeout = open_timeout
        self._max_frame_bytes = max_frame_bytes
        self._rng = rng or random.Random()
        self._events: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size + 1)
        self._queue_size = queue_size
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._closing = False
        self.stopped = False
        self.connected = False
        self.error: PermanentError | None = None
        #: Counters for monitoring and tests (more in :meth:`stats`).
        self.connects = self.reconnects = self.connect_failures = 0
        self.resyncs_sent = self.bad_frames = self.dropped_events = 0
        self.last_close_code: int | None = None
        self.last_close_reason: str = ""
        self.last_error: BaseException | None = None
        #: Seconds the client waits before its next attempt, while it waits (for status displays).
        self.retry_delay: float | None = None
        #: Per gateway base URL: loop time before which its Retry-After says not to come back.
        self._not_before: dict[int, float] = {}

    @property
    def url(self) -> str:
        """The URL the next (or current) connection uses."""
        return build_url(self._bases[self._base_index], self.room, role=self.role, token=self._token)

    async def renew(self, token: str) -> None:
        """Replace the access token before it expires.

        The open connection gets it at once (the gateway then extends the
        connection's expiry); later reconnects use it too.
        """
        self._token = token
        if self._ws is not None and self.connected:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(msgpack.packb({"t": "auth", "token": token}))

    # -- state accessors -------------------------------------------------------

    @property
    def items(self) -> dict[str, dict[str, Any]]:
        return self.view.items

    @property
    def snapshots(self) -> int:
        return self.view.snapshots

    @property
    def gaps(self) -> int:
        return self.view.gaps

    @property
    def stale_items(self) -> int:
        return self.view.stale_items

    def stats(self) -> dict[str, int | None]:
        """Counters in one dict, for logs and load-test reports."""
        v = self.view
        return {
            "connects": self.connects, "reconnects": self.reconnects,
            "connect_failures": self.connect_failures, "snapshots": v.snapshots,
            "gaps": v.gaps, "resyncs_sent": self.resyncs_sent, "stale_items": v.stale_items,
            "stale_frames": v.stale_frames, "ignored_frames": v.ignored_frames,
            "malformed_items": v.malformed_items, "bad_frames": self.bad_frames,
            "dropped_events": self.dropped_events, "last_close_code": self.last_close_code,
        }

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> StockClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("client already started")
        self._task = asyncio.create_task(self._run(), name=f"stockwire-client-{self.room}")

    async def close(self) -> None:
        """Stop for good; never raises, even after a permanent error."""
        self._closing = True
        task = self._task
        if task is None:
            self._finish()
            return
        ws = self._ws
        if ws is not None:
            try:
                await ws.close()  # a clean 1000, so the gateway logs a normal leave
            except Exception:
                log.debug("close handshake failed", exc_info=True)
        if task is asyncio.current_task():
            return  # called from a callback: the loop sees _closing and ends itself
        task.cancel()
        await asyncio.wait([task])

    async def wait_closed(self) -> None:
        """Wait until the client stops; raises :class:`PermanentError` if that is why."""
        if self._task is not None:
            await asyncio.wait([self._task])
        if self.error is not None:
            raise self.error

    async def wait_for(self, predicate: Callable[[StockClient], bool],
                       timeout: float | None = 10.0) -> None:
        """Resolve once ``predicate(client)`` holds; it is re-checked after every
        frame and connection change.  Raises TimeoutError, or the permanent
        error / :class:`ClientClosed` if the client stops first."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.stopped:
                    if self.error is not None:
                        raise self.error
                    raise ClientClosed("client closed before the condition held")
                await self._changed.wait()

    # -- iteration -----------------------------------------------------------------

    def __aiter__(self) -> StockClient:
        return self

    async def __anext__(self) -> Event:
        if self._task is None and not self.stopped:
            raise RuntimeError("start the client (async with) before iterating")
        event = await self._events.get()
        if event is _END:
            self._events.put_nowait(_END)  # later calls end too
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        return cast(Event, event)

    def drain(self) -> list[Event]:
        """Take every queued event without waiting, for consumers that batch."""
        out: list[Event] = []
        while not self._events.empty():
            event = self._events.get_nowait()
            if event is _END:
                self._events.put_nowait(_END)
                break
            out.append(event)
        return out

    # -- internals ---------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _enqueue(self, item: object) -> None:
        # Room for _END is reserved: the queue holds queue_size events plus one.
        if item is not _END and self._events.qsize() >= self._queue_size:
            self._events.get_nowait()
            self.dropped_events += 1
        self._events.put_nowait(item)

    def _finish(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.connected = False
            self._enqueue(_END)
            self._notify()

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closing:
                if await self._session():
                    attempt = 0
                if self._closing:
                    break
                self._base_index = (self._base_index + 1) % len(self._bases)
                self.retry_delay = self._next_delay(attempt)
                await asyncio.sleep(self.retry_delay)
                self.retry_delay = None
                attempt += 1
        except PermanentError as exc:
            self.error = exc
            log.warning("stockwire client stopped: %s", exc)
        finally:
            self._ws = None
            self._finish()

    def _next_delay(self, attempt: int) -> float:
        """The jittered backoff, after whatever Retry-After the next gateway gave."""
        delay = backoff_delay(attempt, *self._backoff, rng=self._rng)
        not_before = self._not_before.pop(self._base_index, None)
        if not_before is not None:
            delay += max(0.0, not_before - asyncio.get_running_loop().time())
        return delay

    async def _session(self) -> bool:
        """One connection, from open to close; True if it delivered a snapshot."""
        delivered = False
        try:
            async with connect(self.url, open_timeout=self._open_timeout, compression=None,
                               max_size=self._max_frame_bytes, close_timeout=2) as ws:
                self._opened(ws)
                try:
                    async for message in ws:
                        delivered = await self._receive(ws, message) or delivered
                except ConnectionClosed:
                    pass  # the close code, read below, says what to do
                finally:
                    self._closed(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
                raise PermanentError(status, body or f"HTTP {status}") from None
            if status in RETRY_AFTER_STATUSES:
                wait = retry_after_seconds(exc.response.headers.get("Retry-After"))
                if wait is not None:
                    self._not_before[self._base_index] = asyncio.get_running_loop().time() + wait
            self.connect_failures += 1
            self.last_error = exc
            self._notify()
            return delivered
        except Exception as exc:
            # Refused connections, timeouts and HTTP errors are routine while a
            # gateway restarts; anything else is logged loudly but still retried,
            # because a display that gives up is worse than one that keeps trying.
            expected = isinstance(exc, OSError | TimeoutError | InvalidHandshake)
            (log.debug if expected else log.exception)("connect to %s failed: %r", self.url, exc)
            self.connect_failures += 1
            self.last_error = exc
            self._notify()
            return delivered
        code = self.last_close_code
        if code is not None and code in PERMANENT_CLOSE_CODES and not self._closing:
            raise PermanentError(code, self.last_close_reason)
        return delivered

    def _opened(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self.view.expect_snapshot()
        self._notify()

    def _closed(self, ws: ClientConnection) -> None:
        self._ws = None
        self.connected = False
        code, reason = ws.close_code, ws.close_reason or ""
        sent = ws.protocol.close_sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG and code != sent.code:
            # We failed the connection ourselves (it reads as 1006): a gateway
            # frame over max_frame_bytes, which the next snapshot would repeat.
            code, reason = sent.code, f"{sent.reason} (raise max_frame_bytes)"
        self.last_close_code = code
        self.last_close_reason = reason
        if not self._closing:
            log.info("stockwire connection closed: %s %s", code, reason)
        self._notify()

    async def _receive(self, ws: ClientConnection, message: str | bytes) -> bool:
        if isinstance(message, str):
            self.bad_frames += 1  # the gateway only speaks binary msgpack
            return False
        try:
            frame = msgpack.unpackb(message, raw=False, strict_map_key=False)
        except Exception:  # msgpack raises many types on garbage
            self.bad_frames += 1
            return False
        event = self.view.apply(frame)
        if self.view.take_resync():
            await ws.send(_RESYNC)
            self.resyncs_sent += 1
        if event is None:
            return False
        self._enqueue(event)
        callback = self.on_snapshot if isinstance(event, Snapshot) else self.on_update
        if callback is not None:
            await _call(callback, event)
        self._notify()  # after the callback, so wait_for sees what it did too
        return isinstance(event, Snapshot)


async def _call(callback: Callback, event: Event) -> None:
    # A broken UI callback must not take the subscription down with it.
    try:
        result = callback(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("stockwire client callback failed")
