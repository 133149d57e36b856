"""The websockets adapter: admission, HTTP endpoints, and one connection's life.

Frames reach clients through :class:`gateway.connection.WsClient`, which
appends pre-built frame bytes straight to the transport: the hub builds each
frame once per room and audience, and every client gets the same bytes object.

Admission happens in ``process_request``, before the WebSocket upgrade, so a
refused handshake (bad token, node full, rate limited) costs one small HTTP
response and never a connection slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgpack
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.alerts import Thresholds
from gateway.auth import Authenticator, AuthError, Grant, authorize
from gateway.brokers.base import Broker
from gateway.brokers.memory import MemoryBroker
from gateway.brokers.redis import RedisBroker
from gateway.connection import PING_FRAME, Admission, StockwireConnection, WsClient, write_cap
from gateway.hub import Hub, HubConfig
from gateway.keepalive import Keepalive
from gateway.limits import AddressBuckets, ConnectionCounts, TokenBucket, forwarded_client, origin_allowed
from gateway.metrics import Metrics
from gateway.pages import page_response
from gateway.protocol import (
    AUDIENCES,
    MAX_CLIENT_FRAME,
    BadMessage,
    CloseCode,
    decode_client_frame,
    valid_room,
    ws_binary_frame,
)
from gateway.settings import Settings

log = logging.getLogger("stockwire.server")
WS_PREFIX = "/ws/"
#: Seconds a closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT = 2.0


#: Request headers that must appear at most once; a second copy is ambiguous
#: (which Origin was checked, which token?) and is refused with 400.
SINGLE_HEADERS = ("Origin", "Authorization")
#: Close codes websockets sends by itself, and the reason they are counted under.
PROTOCOL_CLOSES = {1002: "protocol_error", 1007: "invalid_utf8", CloseCode.MESSAGE_TOO_BIG: "too_big"}


def build_broker(settings: Settings, metrics: Metrics) -> Broker:
    if settings.broker == "memory":
        return MemoryBroker()
    return RedisBroker(settings.redis_url, cluster=settings.redis_cluster,
                       reconnect_max=settings.redis_reconnect_max,
                       on_reconnect=metrics.redis_reconnects.inc,
                       on_shard_state=metrics.shard_state)


def build_authenticator(settings: Settings) -> Authenticator:
    public_key = None
    if settings.jwt_public_key_file:
        public_key = Path(settings.jwt_public_key_file).read_text()
    return Authenticator(secret=settings.jwt_secret, public_key=public_key,
                         algorithms=settings.algorithms(),
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
                urgent_interval=s.urgent_interval,
                max_stretch=s.max_interval_stretch,
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
        self.address_handshakes = AddressBuckets(s.handshake_rate_per_address,
                                                 s.handshake_burst_per_address)
        self.draining = False
        self.server: Server | None = None
        self._clients: set[WsClient] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self.keepalive: Keepalive[WsClient] = Keepalive(s.ping_interval)
        self._pinger: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()
        self._drain_timers: list[asyncio.TimerHandle] = []
        self._stopping: asyncio.Future[None] | None = None
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
        s = self.settings
        await self.hub.start()
        connection = functools.partial(
            StockwireConnection, message_rate=s.client_message_rate,
            message_burst=s.client_message_burst, write_cap=write_cap(s.send_buffer_limit),
            closes=self.metrics.client_closes,
        )
        self.server = await serve(
            self._handle,
            s.host,
            s.port,
            process_request=self._http,
            process_response=self._responded,
            compression=None,  # frames are shared bytes; per-client deflate would undo that
            max_size=MAX_CLIENT_FRAME,
            max_queue=4,
            create_connection=connection,  # type: ignore[arg-type]
            ping_interval=None,  # gateway.keepalive pings, spread evenly over the interval
            ping_timeout=None,
            close_timeout=CLOSE_TIMEOUT,
            server_header="stockwire",
            reuse_port=self.reuse_port or None,
            backlog=s.backlog,
        )
        self._port = self.server.sockets[0].getsockname()[1]
        self._watchdog = asyncio.create_task(self._watch_loop())
        self._pinger = asyncio.create_task(self._keepalive_loop())
        log.info("gateway.started", extra={"fields": {"url": self.url, "broker": s.broker}})

    async def stop(self) -> None:
        """Close every remaining client with 1001 and stop.

        Safe to call again and in the middle of a drain (a second SIGTERM):
        the drain's pending 1012s are cancelled and whoever is left goes at once.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._stopping)

    async def _shutdown(self) -> None:
        for task in (self._watchdog, self._pinger):
            if task is not None:
                task.cancel()
        for timer in self._drain_timers:
            timer.cancel()
        self._drain_timers.clear()
        if self._clients:
            log.info("gateway.stopping", extra={"fields": {"clients": len(self._clients)}})
        for client in list(self._clients):
            self._close(client, CloseCode.GOING_AWAY, "going away", "going_away")
        if self.server is not None:
            # A drain already closed the listener, which makes this a no-op;
            # otherwise it also closes connections not yet in the handler.
            self.server.close(close_connections=True)
            # Closing handshakes take at most close_timeout; a peer that holds its
            # TCP connection open past that is cut off rather than waited for.
            try:
                await asyncio.wait_for(asyncio.shield(self.server.wait_closed()), CLOSE_TIMEOUT + 3)
            except TimeoutError:
                left = list(self.server.connections)
                log.warning("gateway.stop_slow", extra={"fields": {"connections": len(left)}})
                for connection in left:
                    connection.transport.abort()
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
        self._drain_timers = [
            loop.call_later(window * i / len(clients), self._restart, client)
            for i, client in enumerate(clients)
        ]
        # Late joiners (upgraded before the drain, in the handler after it) are
        # closed as they arrive and waited for like the others.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window + 5):
                while self._clients or (self.server is not None and self.server.connections):
                    self._emptied.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._emptied.wait(), 0.5)
        await self.stop()

    def _restart(self, client: WsClient) -> None:
        self._close(client, CloseCode.SERVICE_RESTART, "service restart", "service_restart")

    def _close(self, client: WsClient, code: int, text: str, reason: str) -> None:
        if not client.closing:
            self.metrics.client_closes.labels(reason).inc()
            client.close(code, text)

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
        """Answer HTTP or admit an upgrade; a bug here is a counted 500, never a traceback."""
        try:
            return self._route(connection, request)
        except Exception:
            log.exception("request.failed", extra={"fields": {"path": urlsplit(request.path).path}})
            return self._refuse(connection, 500, "internal_error", "internal error")

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
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

    def _responded(self, connection: ServerConnection, request: Request, response: Response) -> None:
        """Count upgrades we admitted but websockets refused (no Upgrade header, bad key…)."""
        admission: Admission | None = getattr(connection, "admission", None)
        if admission is not None and response.status_code != 101:
            self.metrics.refusals.labels("bad_handshake").inc()
            admission.release()

    def _refuse(self, connection: ServerConnection, status: int, reason: str, text: str,
                retry_after: float | None = None) -> Response:
        self.metrics.refusals.labels(reason).inc()
        response = connection.respond(status, text + "\n")
        if retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response

    def _address(self, connection: ServerConnection, request: Request) -> str:
        if self.settings.proxy_headers:
            forwarded = forwarded_client(request.headers.get_all("X-Forwarded-For"),
                                         self.settings.proxy_hops)
            if forwarded is not None:
                return forwarded
        peer = connection.remote_address
        return str(peer[0]) if peer else "unknown"

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Cheapest and most specific checks first: one address must not spend the
        node-wide handshake budget that everyone else shares."""
        if self.draining:
            return self._refuse(connection, 503, "draining", "draining: reconnect to another node",
                                random.uniform(1, 5))
        for name in SINGLE_HEADERS:
            if len(request.headers.get_all(name)) > 1:
                return self._refuse(connection, 400, "bad_request", f"duplicate {name} header")
        address = self._address(connection, request)
        now = time.monotonic()
        if self.counts.address_full(address):
            return self._refuse(connection, 429, "address_full", "too many connections from this address",
                                random.uniform(5, 15))
        if not self.address_handshakes.take(address, now):
            return self._refuse(connection, 429, "address_rate", "too many new connections from this address",
                                self.address_handshakes.wait_time(address) + random.uniform(0, 2))
        if self.counts.full():
            return self._refuse(connection, 503, "node_full", "node is full", random.uniform(1, 10))
        if not self.handshakes.take(now):
            return self._refuse(connection, 503, "handshake_rate", "too many new connections",
                                self.handshakes.wait_time() + random.uniform(0, 2))
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
        self.counts.add(address)
        connection.admission = Admission(address, grant, self.counts)  # type: ignore[attr-defined]
        return None

    # -- WebSocket ---------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        admission: Admission | None = getattr(ws, "admission", None)
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
        expiry: list[asyncio.TimerHandle | None] = [None]
        try:
            self._clients.add(client)
            self.keepalive.add(client)
            expiry = self._expire_at(client, admission.grant)
            self.hub.join(client)
            if self._stopping is not None:
                self._close(client, CloseCode.GOING_AWAY, "going away", "going_away")
            elif self.draining:  # admitted before the drain began, handled after
                self._restart(client)
            await self._receive(ws, client, expiry)  # type: ignore[arg-type]
        except ConnectionClosed:
            self._count_protocol_close(ws)
        except Exception:
            log.exception("connection.failed", extra={"fields": {"room": room, "audience": role}})
            self.metrics.client_closes.labels("internal_error").inc()
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if expiry[0] is not None:
                expiry[0].cancel()
            self.hub.leave(client)
            self._clients.discard(client)
            self.keepalive.remove(client)
            if not self._clients:
                self._emptied.set()

    def _count_protocol_close(self, ws: ServerConnection) -> None:
        """Count the closes websockets sends by itself (the one sent, not received:
        on a too-big frame websockets sends 1009 and drops the connection)."""
        sent = ws.protocol.close_sent
        if sent is None:
            return
        if sent.code in PROTOCOL_CLOSES:
            self.metrics.client_closes.labels(PROTOCOL_CLOSES[sent.code]).inc()
        elif sent.code == CloseCode.INTERNAL_ERROR and not sent.reason:
            self.metrics.client_closes.labels("internal_error").inc()

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

    async def _receive(self, ws: StockwireConnection, client: WsClient,
                       expiry: list[asyncio.TimerHandle | None]) -> None:
        async for data in ws:
            if ws.protocol.close_sent is not None:
                # websockets closed first (1009, 1002, 1007): messages queued before that
                # get no answer, and its close is the one counted.
                self._count_protocol_close(ws)
                return
            if not ws.messages.take(time.monotonic()):  # shared with WebSocket pings
                await ws.refuse("too_many_messages", CloseCode.TOO_MANY_MESSAGES, "too many messages")
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
