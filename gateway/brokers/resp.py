"""A minimal RESP2 connection for sharded pub/sub, parsed by hiredis.

Why not redis-py's ``PubSub`` for this one connection: under a flash-sale
surge the pub/sub stream is the gateway's hottest input, and redis-py spends
several Python calls on every message (the response read, the push handling,
the message dict, the retry wrapper) before the hub sees it.  Here one
``data_received`` feeds hiredis and hands every complete message straight to
a callback, so a read that carries a hundred messages costs about one
dispatch each.  (Measured on one core: redis-py's ``get_message`` loop
delivered ~66,000 messages/s, this ~150,000.)  Commands — the snapshot
script, viewer counts, stock operations — still go through redis-py: they
are few, and they want its retries and cluster routing.

The connection speaks only what a subscriber needs: an optional ``AUTH``,
``PING``, ``SSUBSCRIBE`` and ``SUNSUBSCRIBE``.  In subscribed mode every
reply is a push (an array); the only other replies are errors (``MOVED``
for a channel whose slot is elsewhere), and before the first subscription
the plain replies to ``AUTH`` and ``PING``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

Push = list[Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one shard's pub/sub connection goes, and how it authenticates."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host and port
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def name(self) -> str:
        return self.path or f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path``.

        The database number does not matter: pub/sub is global to a server.
        """
        parts = urlsplit(url)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            return cls(path=parts.path, username=username, password=password)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a Redis URL: {url!r}")
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, username=username,
                   password=password, tls=parts.scheme == "rediss")

    def at(self, host: str, port: int) -> Endpoint:
        """The same credentials at another node (a cluster's primaries share them)."""
        return Endpoint(host=host, port=port, username=self.username, password=self.password, tls=self.tls)


def encode_command(*args: bytes | str | int) -> bytes:
    """A RESP array of bulk strings: how every command travels to Redis."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class PubSubProtocol(asyncio.Protocol):
    """Feeds hiredis; pushes go to ``on_push``, errors nobody waits for to ``on_error``."""

    def __init__(self, on_push: Callable[[Push], None], on_error: Callable[[Exception], None]) -> None:
        self._reader = hiredis.Reader()
        self._on_push = on_push
        self._on_error = on_error
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Bytes received so far: the watchdog's sign of life, cheaper than a clock per message.
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if type(reply) is list:
                    self._on_push(reply)
                elif self._waiting:
                    future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(reply)
                elif isinstance(reply, Exception):
                    self._on_error(reply)
        except hiredis.ProtocolError as exc:  # not RESP: nothing after it can be trusted
            self._fail(ConnectionError(f"redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"redis connection lost: {exc or 'closed'}"))

    def _fail(self, exc: ConnectionError) -> None:
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if not self.closed.done():
            self.closed.set_exception(exc)
            self.closed.exception()  # retrieved: the owner may never wait on it
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def expect_reply(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        return future


class PubSubConnection:
    """One open pub/sub connection; ``send`` is fire-and-forget, replies arrive as pushes."""

    def __init__(self, protocol: PubSubProtocol) -> None:
        self._protocol = protocol

    @property
    def received(self) -> int:
        return self._protocol.received

    @classmethod
    async def open(cls, endpoint: Endpoint, on_push: Callable[[Push], None],
                   on_error: Callable[[Exception], None], *, timeout: float = 2.0) -> PubSubConnection:
        """Connect, authenticate and check the server answers; raises ``ConnectionError``
        (or ``TimeoutError``) when it does not."""
        loop = asyncio.get_running_loop()

        def factory() -> PubSubProtocol:
            return PubSubProtocol(on_push, on_error)

        context = ssl_module.create_default_context() if endpoint.tls else None
        async with asyncio.timeout(timeout):
            if endpoint.path is not None:
                _, protocol = await loop.create_unix_connection(factory, endpoint.path)
            else:
                _, protocol = await loop.create_connection(factory, endpoint.host, endpoint.port, ssl=context)
            connection = cls(protocol)
            try:
                if endpoint.password is not None:
                    credentials = [endpoint.username, endpoint.password] if endpoint.username else [
                        endpoint.password]
                    await connection.request("AUTH", *credentials)
                await connection.request("PING")
            except BaseException:
                connection.close()
                raise
        return connection

    async def request(self, *args: bytes | str | int) -> Any:
        """A command answered by a plain reply: only before the first subscription."""
        future = self._protocol.expect_reply()
        self.send(*args)
        reply = await future
        if isinstance(reply, Exception):
            raise ConnectionError(f"redis refused {args[0]}: {reply}")
        return reply

    def send(self, *args: bytes | str | int) -> None:
        transport = self._protocol.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("redis connection is closed")
        transport.write(encode_command(*args))

    async def wait_closed(self) -> None:
        """Return (by raising ``ConnectionError``) when the connection is gone."""
        await asyncio.shield(self._protocol.closed)

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.abort()
