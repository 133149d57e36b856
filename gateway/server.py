"""The websockets adapter: admission, HTTP endpoints, and one connection's life.

Frames reach clients through :class:`WsClient`, which appends pre-built frame
bytes straight to the transport: the hub builds each frame once per room and
audience, and every client gets the same bytes object.

Admission happens in ``process_request``, before the WebSocket upgrade, so a
refused handshake (bad token, node full, rate limited) costs one small HTTP
response and never a connection slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgpack
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from gateway.alerts import Thresholds
from gateway.auth import Authenticator, AuthError, Grant, authorize
from gateway.brokers.base import Broker
from gateway.brokers.memory import MemoryBroker
from gateway.brokers.redis import RedisBroker
from gateway.hub import Hub, HubConfig
from gateway.keepalive import Keepalive
from gateway.limits import ConnectionCounts, TokenBucket, origin_allowed
from gateway.metrics import Metrics
from gateway.pages import page_response
from gateway.protocol import (
    AUDIENCES,
    MAX_CLIENT_FRAME,
    Audience,
    BadMessage,
    CloseCode,
    decode_client_frame,
    valid_room,
    ws_binary_frame,
)
from gateway.settings import Settings

log = logging.getLogger("stockwire.server")
OPEN = State.OPEN

WS_PREFIX = "/ws/"
#: An unmasked, empty WebSocket ping (RFC 6455 §5.5.2): built once, written as is.
PING_FRAME = b"\x89\x00"


class StockwireConnection(ServerConnection):
    """A server connection that notes when its peer last sent anything, for :mod:`gateway.keepalive`."""

    last_rx = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        super().data_received(data)


class WsClient:
    """One connected screen, as the hub sees it."""

    __slots__ = ("_closing", "_protocol", "audience", "lagging_since", "pinged_at", "room", "transport", "ws")

    def __init__(self, ws: ServerConnection, room: str, audience: Audience) -> None:
        self.ws = ws
        self.transport = ws.transport
        self._protocol = ws.protocol
        self.room = room
        self.audience: Audience = audience
        self.lagging_since: float | None = None
        self.pinged_at = 0.0
        self._closing: asyncio.Task[None] | None = None

    @property
    def last_rx(self) -> float:
        return getattr(self.ws, "last_rx", 0.0)

    def write(self, frame: bytes) -> None:
        if self._protocol.state is OPEN:  # no data after our close frame
            self.transport.write(frame)

    def offer(self, frame: bytes, limit: int) -> bool:
        transport = self.transport
        if transport.get_write_buffer_size() > limit:
            return False
        if self._protocol.state is OPEN:
            transport.write(frame)
        return True

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self.ws.close(code, reason))


@dataclass(slots=True)
class Admission:
    """What the handshake decided, handed to the connection's handler."""

    address: str
    grant: Grant | None


def build_broker(settings: Settings, metrics: Metrics) -> Broker:
    if settings.broker == "memory":
        return MemoryBroker()
    return RedisBroker(settings.redis_url, cluster=settings.redis_cluster,
                       reconnect_max=settings.redis_reconnect_max,
                       on_reconnect=metrics.redis_reconnects.inc)


def build_authenticator(settings: Settings) -> Authenticator:
    public_key = None
    if settings.jwt_public_key_file:
        public_key = Path(settings.jwt_public_key_file).read_text()
    algorithms = [a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()]
    return Authenticator(secret=settings.jwt_secret, public_key=public_key, algorithms=algorithms,
                         issuer=settings.jwt_issuer, audience=settings.jwt_audience)


class Gateway:
    """One gateway node: a hub, a broker, and a websockets server on one port."""

    def __init__(self, settings: Settings | None = None, broker: Broker | None = None, *,
                 reuse_port: bool = False, worker: int = 0) -> None:
        self.settings = settings or Settings()
        self.metrics = Metrics(worker)
        self.reuse_port = reuse_port
        s = self.settings
        self.hub = Hub(
            broker or build_broker(s, self.metrics),
            HubConfig(
                interval=s.interval,
                thresholds=Thresholds(s.safety_line, s.critical_line),
                send_buffer_limit=s.send_buffer_limit,
                slow_client_timeout=s.slow_client_timeout,
                room_grace=s.room_grace,
                max_record_bytes=s.max_record_bytes,
                stats_interval=s.stats_interval,
            ),
            self.metrics,
        )
        self.auth = build_authenticator(s)
        self.origins = s.origins()
        self.counts = ConnectionCounts(s.max_connections_per_address, s.max_connections)
        self.handshakes = TokenBucket(s.handshake_rate, s.handshake_burst, time.monotonic())
        self.draining = False
        self.server: Server | None = None
        self._admitted: dict[ServerConnection, Admission] = {}
        self._clients: set[WsClient] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self.keepalive: Keepalive[WsClient] = Keepalive(s.ping_interval)
        self._pinger: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()
        self._port: int | None = None

    @property
    def broker(self) -> Broker:
        return self.hub.broker

    @property
    def port(self) -> int:
        """The bound port (kept after the listener closes, for logs and drains)."""
        assert self._port is not None, "gateway not started"
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        await self.hub.start()
        self.server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._http,
            compression=None,  # frames are shared bytes; per-client deflate would undo that
            max_size=MAX_CLIENT_FRAME,
            max_queue=4,
            create_connection=StockwireConnection,
            ping_interval=None,  # gateway.keepalive pings, spread evenly over the interval
            ping_timeout=None,
            close_timeout=2,
            server_header="stockwire",
            reuse_port=self.reuse_port or None,
            backlog=self.settings.backlog,
        )
        self._port = self.server.sockets[0].getsockname()[1]
        self._watchdog = asyncio.create_task(self._watch_loop())
        self._pinger = asyncio.create_task(self._keepalive_loop())
        log.info("gateway.started", extra={"fields": {"url": self.url, "broker": self.settings.broker}})

    async def stop(self) -> None:
        for task in (self._watchdog, self._pinger):
            if task is not None:
                task.cancel()
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        await self.hub.stop()

    async def drain(self, window: float | None = None) -> None:
        """Stop accepting, then ask clients to reconnect elsewhere, spread over ``window``.

        Closing everyone at once would send the whole audience to the other
        nodes in the same second; spreading the 1012 closes turns a thundering
        herd into a steady stream the load balancer can absorb.
        """
        window = self.settings.drain_window if window is None else window
        self.draining = True
        log.info("gateway.draining", extra={"fields": {"clients": len(self._clients), "window": window}})
        if self.server is not None:
            self.server.close(close_connections=False)
        clients = list(self._clients)
        random.shuffle(clients)
        loop = asyncio.get_running_loop()
        for i, client in enumerate(clients):
            delay = window * i / len(clients)
            loop.call_later(delay, client.close, CloseCode.SERVICE_RESTART, "service restart")
        if self._clients:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), window + 5)
        await self.stop()

    async def _watch_loop(self) -> None:
        """Measure event-loop lag: the gateway's own "am I CPU-saturated?" signal."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.1)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - start - 0.1))

    async def _keepalive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        closes = self.metrics.client_closes.labels("ping_timeout")
        while True:
            await asyncio.sleep(self.keepalive.tick)
            ping, dead = self.keepalive.due(loop.time())
            for client in ping:
                client.write(PING_FRAME)
            for client in dead:
                closes.inc()
                client.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    # -- HTTP and admission ----------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path.startswith(WS_PREFIX):
            return self._admit(connection, request)
        if path == "/healthz":
            return connection.respond(200, "ok\n")
        if path == "/readyz":
            if self.draining:
                return connection.respond(503, "not ready: draining\n")
            if self.broker.ready:
                return connection.respond(200, "ready\n")
            return connection.respond(503, "not ready: broker unreachable\n")
        if path == "/metrics":
            body = self.metrics.render()
            headers = Headers(
                [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body))),
                 ("Connection", "close")]
            )
            return Response(200, "OK", headers, body)
        page = page_response(connection, path)
        if page is not None:
            return page
        return connection.respond(404, "not found\n")

    def _refuse(self, connection: ServerConnection, status: int, reason: str, text: str,
                retry_after: float | None = None) -> Response:
        self.metrics.refusals.labels(reason).inc()
        response = connection.respond(status, text + "\n")
        if retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response

    def _address(self, connection: ServerConnection, request: Request) -> str:
        if self.settings.proxy_headers:
            forwarded = request.headers.get("X-Forwarded-For")
            if forwarded:
                return forwarded.split(",")[0].strip()
        peer = connection.remote_address
        return str(peer[0]) if peer else "unknown"

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.draining:
            return self._refuse(connection, 503, "draining", "draining: reconnect to another node",
                                random.uniform(1, 5))
        if not self.handshakes.take(time.monotonic()):
            return self._refuse(connection, 503, "handshake_rate", "too many new connections",
                                self.handshakes.wait_time() + random.uniform(0, 2))
        if self.counts.full():
            return self._refuse(connection, 503, "node_full", "node is full", random.uniform(1, 10))
        address = self._address(connection, request)
        if self.counts.address_full(address):
            return self._refuse(connection, 429, "address_full", "too many connections from this address",
                                random.uniform(5, 15))
        if not origin_allowed(request.headers.get("Origin"), self.origins):
            return self._refuse(connection, 403, "origin", "origin not allowed")
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        room = parts.path[len(WS_PREFIX):]
        role = query.get("role", ["viewer"])[0]
        grant = None
        if valid_room(room) and role in AUDIENCES:  # otherwise the handler closes with a reason
            token = query.get("token", [None])[0] or _bearer(request)
            try:
                grant = authorize(self.auth, token, room, role,  # type: ignore[arg-type]
                                  self.settings.require_viewer_token)
            except AuthError as exc:
                return self._refuse(connection, exc.status, exc.reason, exc.message)
        self._admitted[connection] = Admission(address, grant)
        return None

    # -- WebSocket ---------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        admission = self._admitted.pop(ws, None)
        if admission is None:  # pragma: no cover - every upgrade passes _admit first
            await ws.close(CloseCode.INTERNAL_ERROR, "not admitted")
            return
        parts = urlsplit(ws.request.path if ws.request else "")
        room = parts.path[len(WS_PREFIX):]
        if not valid_room(room):
            self.metrics.client_closes.labels("bad_room").inc()
            await ws.close(CloseCode.UNKNOWN_ROOM, "invalid room name")
            return
        role = parse_qs(parts.query).get("role", ["viewer"])[0]
        if role not in AUDIENCES:
            self.metrics.client_closes.labels("bad_role").inc()
            await ws.close(CloseCode.BAD_FRAME, "role must be viewer or host")
            return
        client = WsClient(ws, room, role)  # type: ignore[arg-type]
        self.counts.add(admission.address)
        self._clients.add(client)
        self.keepalive.add(client)
        expiry = self._expire_at(client, admission.grant)
        self.hub.join(client)
        try:
            await self._receive(ws, client, expiry)
        except ConnectionClosed:
            # The close the gateway sent, not the one received: on a too-big
            # frame websockets sends 1009 and drops the connection.
            sent = ws.protocol.close_sent
            if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
                self.metrics.client_closes.labels("too_big").inc()
        finally:
            if expiry[0] is not None:
                expiry[0].cancel()
            self.hub.leave(client)
            self._clients.discard(client)
            self.keepalive.remove(client)
            self.counts.remove(admission.address)
            if not self._clients:
                self._emptied.set()

    def _expire_at(self, client: WsClient, grant: Grant | None) -> list[asyncio.TimerHandle | None]:
        """Close the connection when its token expires, unless it is renewed first."""
        handle: list[asyncio.TimerHandle | None] = [None]
        if grant is not None and grant.expires_at is not None:
            delay = max(0.0, grant.expires_at - time.time())
            handle[0] = asyncio.get_running_loop().call_later(delay, self._token_expired, client)
        return handle

    def _token_expired(self, client: WsClient) -> None:
        self.metrics.client_closes.labels("token_expired").inc()
        client.close(CloseCode.TOKEN_EXPIRED, "token expired")

    async def _receive(self, ws: ServerConnection, client: WsClient,
                       expiry: list[asyncio.TimerHandle | None]) -> None:
        s = self.settings
        bucket = TokenBucket(s.client_message_rate, s.client_message_burst, time.monotonic())
        async for data in ws:
            if not bucket.take(time.monotonic()):
                self.metrics.client_closes.labels("too_many_messages").inc()
                await ws.close(CloseCode.TOO_MANY_MESSAGES, "too many messages")
                return
            try:
                message = decode_client_frame(data)
            except BadMessage as exc:
                self.metrics.client_closes.labels("bad_frame").inc()
                await ws.close(CloseCode.BAD_FRAME, f"bad frame: {exc.reason}")
                return
            if message.kind == "resync":
                self.hub.resync(client)
            elif message.kind == "ping":
                client.write(ws_binary_frame(msgpack.packb({"t": "pong", "id": message.id})))
            elif message.kind == "auth" and message.token is not None:
                refusal = self._renew(client, message.token, expiry)
                if refusal is not None:
                    self.metrics.client_closes.labels(refusal.reason).inc()
                    code = CloseCode.FORBIDDEN if refusal.status == 403 else CloseCode.TOKEN_EXPIRED
                    await ws.close(code, refusal.message)
                    return

    def _renew(self, client: WsClient, token: str,
               expiry: list[asyncio.TimerHandle | None]) -> AuthError | None:
        """Swap in a fresh token; returns the refusal if the token does not do."""
        try:
            grant = authorize(self.auth, token, client.room, client.audience, True)
        except AuthError as exc:
            return exc
        if expiry[0] is not None:
            expiry[0].cancel()
        expiry[:] = self._expire_at(client, grant)
        client.write(ws_binary_frame(msgpack.packb({"t": "auth", "exp": grant.expires_at})))
        return None


def _bearer(request: Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
