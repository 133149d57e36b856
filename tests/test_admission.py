"""Who gets in: tokens, origins, connection caps and rate limits, end to end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gateway.connection import StockwireConnection
from gateway.protocol import CloseCode
from gateway.server import Gateway
from tests.conftest import gateway_settings, token
from tests.screens import Screen


async def refusal(url: str, **kwargs: object) -> tuple[int, dict[str, str], str]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    response = info.value.response
    return response.status_code, dict(response.headers.raw_items()), response.body.decode()


def upgrade_request(path: str, *headers: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(port: int, request: bytes) -> tuple[int, str, asyncio.StreamWriter]:
    """Send one raw request; the status and body (empty after a 101), and the open writer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode()
    status = int(head.split(" ", 2)[1])
    body = b""
    for line in head.split("\r\n"):
        if line.lower().startswith("content-length:"):
            body = await asyncio.wait_for(reader.readexactly(int(line.split(":")[1])), 10)
    return status, body.decode(), writer


async def status_of(port: int, request: bytes) -> tuple[int, str]:
    status, body, writer = await exchange(port, request)
    writer.close()
    return status, body


def counted(gw: Gateway, metric: str, reason: str) -> float:
    return getattr(gw.metrics, metric).labels(reason)._value.get()  # type: ignore[no-any-return]


def live_connections() -> int:
    gc.collect()
    return sum(isinstance(o, StockwireConnection) for o in gc.get_objects())


@pytest.fixture
async def gw(redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    overrides = getattr(request, "param", {})
    gateway = Gateway(gateway_settings(redis_url, **overrides))
    await gateway.start()
    yield gateway
    await gateway.stop()


async def test_host_audience_needs_a_host_token_for_that_room(gw: Gateway) -> None:
    base = f"{gw.url}/ws/live-1?role=host"
    assert (await refusal(base))[0] == 401
    status, _, body = await refusal(base + "&token=" + token("viewer", ("live-1",)))
    assert (status, body) == (403, "token does not open the host audience\n")
    assert (await refusal(base + "&token=" + token("host", ("live-2", "shop-*"))))[0] == 403
    assert (await refusal(base + "&token=" + token("host", ("*",), ttl=-60)))[0] == 401
    assert (await refusal(base + "&token=garbage"))[0] == 401
    async with Screen(base + "&token=" + token("host", ("live-*",))) as host:
        await host.until(lambda s: s.frames)
        assert host.frames[0]["t"] == "snapshot"
    async with connect(f"{gw.url}/ws/live-1", additional_headers={
        "Authorization": "Bearer " + token("host", ("live-1",))
    }) as ws:
        assert msgpack.unpackb(await ws.recv())["t"] == "snapshot"
    refusals = gw.metrics.refusals
    assert refusals.labels("missing_token")._value.get() == 1
    assert refusals.labels("wrong_role")._value.get() == 1
    assert refusals.labels("wrong_room")._value.get() == 1
    assert refusals.labels("expired_token")._value.get() == 1
    assert refusals.labels("invalid_token")._value.get() == 1


@pytest.mark.parametrize("gw", [{"require_viewer_token": True}], indirect=True)
async def test_viewer_tokens_when_the_deployment_requires_them(gw: Gateway) -> None:
    assert (await refusal(f"{gw.url}/ws/r"))[0] == 401
    assert (await refusal(f"{gw.url}/ws/r?token=" + token("viewer", ("other",))))[0] == 403
    async with Screen(f"{gw.url}/ws/r?token=" + token("viewer", ("r",))) as viewer:
        await viewer.until(lambda s: s.frames)


async def test_an_expiring_token_closes_the_connection_unless_renewed(gw: Gateway) -> None:
    short = token("host", ("r",), ttl=2)
    async with Screen(f"{gw.url}/ws/r?role=host&token={short}") as lapsing, \
            Screen(f"{gw.url}/ws/r?role=host&token={short}") as renewing:
        await renewing.until(lambda s: s.frames)
        assert renewing.ws is not None
        await renewing.ws.send(msgpack.packb({"t": "auth", "token": token("host", ("r",))}))
        await renewing.until(lambda s: any(f["t"] == "auth" for f in s.frames))
        assert await lapsing.closed(10) == CloseCode.TOKEN_EXPIRED
        assert lapsing.close_reason == "token expired"
        assert renewing.close_code is None
        await renewing.ws.send(msgpack.packb({"t": "auth", "token": token("host", ("other",))}))
        assert await renewing.closed() == CloseCode.FORBIDDEN


@pytest.mark.parametrize("gw", [{"allowed_origins": "https://live.example.com"}], indirect=True)
async def test_browser_origins_outside_the_list_are_refused(gw: Gateway) -> None:
    status, _, _ = await refusal(f"{gw.url}/ws/r", origin="https://evil.example.com")
    assert status == 403
    async with connect(f"{gw.url}/ws/r", origin="https://live.example.com") as ws:
        assert msgpack.unpackb(await ws.recv())["t"] == "snapshot"
    assert gw.metrics.refusals.labels("origin")._value.get() == 1


@pytest.mark.parametrize("gw", [{"max_connections": 2}], indirect=True)
async def test_a_full_node_answers_503_with_retry_after(gw: Gateway) -> None:
    async with Screen(f"{gw.url}/ws/r") as a, Screen(f"{gw.url}/ws/r") as b:
        await a.until(lambda s: s.frames)
        await b.until(lambda s: s.frames)
        status, headers, _ = await refusal(f"{gw.url}/ws/r")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
    await asyncio.sleep(0.1)
    async with Screen(f"{gw.url}/ws/r") as c:  # room again once others left
        await c.until(lambda s: s.frames)


@pytest.mark.parametrize("gw", [{"max_connections_per_address": 1}], indirect=True)
async def test_connections_per_address_are_capped(gw: Gateway) -> None:
    async with Screen(f"{gw.url}/ws/r") as a:
        await a.until(lambda s: s.frames)
        status, headers, _ = await refusal(f"{gw.url}/ws/r")
        assert status == 429
        assert "Retry-After" in headers


@pytest.mark.parametrize("gw", [{"handshake_rate": 0.5, "handshake_burst": 2}], indirect=True)
async def test_new_handshakes_are_rate_limited(gw: Gateway) -> None:
    async with Screen(f"{gw.url}/ws/r") as a, Screen(f"{gw.url}/ws/r") as b:
        await a.until(lambda s: s.frames)
        await b.until(lambda s: s.frames)
        status, headers, _ = await refusal(f"{gw.url}/ws/r")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
    assert gw.metrics.refusals.labels("handshake_rate")._value.get() == 1


@pytest.mark.parametrize("gw", [{"client_message_rate": 1, "client_message_burst": 3}], indirect=True)
async def test_chatty_clients_are_closed_4429(gw: Gateway) -> None:
    async with Screen(f"{gw.url}/ws/r") as chatty, Screen(f"{gw.url}/ws/r") as quiet:
        await chatty.until(lambda s: s.frames)
        assert chatty.ws is not None
        for i in range(10):
            await chatty.ws.send(msgpack.packb({"t": "ping", "id": i}))
        assert await chatty.closed() == CloseCode.TOO_MANY_MESSAGES
        assert quiet.close_code is None


async def test_draining_refuses_newcomers_and_spreads_1012_closes(gw: Gateway) -> None:
    screens = [Screen(f"{gw.url}/ws/r") for _ in range(6)]
    for s in screens:
        await s.__aenter__()
        await s.until(lambda s: s.frames)
    drain = asyncio.create_task(gw.drain(window=1.0))
    await asyncio.sleep(0.05)
    assert gw.draining
    with pytest.raises(ConnectionRefusedError):  # the listener is closed: the balancer moves on
        async with connect(f"{gw.url}/ws/r", open_timeout=2):
            pass
    codes = [await s.closed(10) for s in screens]
    await drain
    assert codes == [CloseCode.SERVICE_RESTART] * 6
    assert all(s.close_reason == "service restart" for s in screens)
    for s in screens:
        await s.__aexit__()


@pytest.mark.parametrize("gw", [{"handshake_burst_per_address": 1000}], indirect=True)
async def test_refused_and_non_upgrade_requests_leave_nothing_behind(gw: Gateway) -> None:
    async with Screen(f"{gw.url}/ws/r") as bystander:
        await bystander.until(lambda s: s.frames)
        baseline = live_connections()
        plain = b"GET /ws/room HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        no_key = b"GET /ws/room HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        for request, status in [(plain, 426), (no_key, 400),
                                (upgrade_request("/ws/r?role=host&token=bad"), 401)]:
            results = await asyncio.gather(*(status_of(gw.port, request) for _ in range(100)))
            assert {code for code, _ in results} == {status}
        for _ in range(50):  # handshakes the client gives up on before the answer
            _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(upgrade_request("/ws/r"))
            await writer.drain()
            writer.transport.abort()
        for _ in range(100):
            if live_connections() <= baseline and gw.counts.count == 1:
                break
            await asyncio.sleep(0.05)
        assert live_connections() <= baseline
        assert (gw.counts.count, dict(gw.counts.by_address)) == (1, {"127.0.0.1": 1})
        assert counted(gw, "refusals", "bad_handshake") == 200  # 426 and 400, now counted
        assert bystander.close_code is None


async def test_concurrent_handshakes_cannot_overrun_the_per_address_cap(redis_url: str) -> None:
    """The slot is taken at the handshake: handlers that start late (a busy
    loop) must not let a burst of handshakes past the cap meanwhile."""
    gw = Gateway(gateway_settings(redis_url, max_connections_per_address=5))
    handle = gw._handle

    async def busy(ws: object) -> None:
        await asyncio.sleep(0.5)
        await handle(ws)  # type: ignore[arg-type]

    gw._handle = busy  # type: ignore[method-assign]
    await gw.start()
    results = []
    try:
        for _ in range(20):
            results.append(await exchange(gw.port, upgrade_request("/ws/r")))
        statuses = [status for status, _, _ in results]
        assert statuses == [101] * 5 + [429] * 15
        assert gw.counts.by_address["127.0.0.1"] == 5
    finally:
        for _, _, writer in results:
            writer.close()
        await gw.stop()


@pytest.mark.parametrize("gw", [{"allowed_origins": "https://live.example.com", "proxy_headers": True}],
                         indirect=True)
async def test_repeated_headers_are_a_counted_400_not_a_500(gw: Gateway) -> None:
    good = token("host", ("r",))
    for headers, name in [
        (("Origin: https://live.example.com", "Origin: https://evil.example.com"), "Origin"),
        ((f"Authorization: Bearer {good}", "Authorization: Bearer x.y.z"), "Authorization"),
    ]:
        status, body = await status_of(gw.port, upgrade_request("/ws/r?role=host", *headers))
        assert (status, body) == (400, f"duplicate {name} header\n")
    assert counted(gw, "refusals", "bad_request") == 2
    # X-Forwarded-For is a list: several lines are one list (HAProxy adds its own line).
    status, _, writer = await exchange(gw.port, upgrade_request(
        "/ws/r", "X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 203.0.113.7"))
    try:
        assert status == 101
        for _ in range(100):
            if gw.counts.by_address:
                break
            await asyncio.sleep(0.02)
        assert dict(gw.counts.by_address) == {"203.0.113.7": 1}
    finally:
        writer.close()


@pytest.mark.parametrize("hops", [1, 2])
async def test_forwarded_addresses_cannot_be_spoofed_past_the_per_address_cap(
    redis_url: str, hops: int
) -> None:
    gw = Gateway(gateway_settings(redis_url, proxy_headers=True, proxy_hops=hops,
                                  max_connections_per_address=2))
    await gw.start()
    # What the trusted proxies appended; whatever the client wrote comes before it.
    appended = "203.0.113.7" if hops == 1 else "203.0.113.7, 198.51.100.2"
    sockets: list[ClientConnection] = []
    try:
        for i in range(2):
            sockets.append(await connect(f"{gw.url}/ws/r", additional_headers={
                "X-Forwarded-For": f"10.0.0.{i}, {appended}"}))
        status, _, _ = await refusal(f"{gw.url}/ws/r", additional_headers={
            "X-Forwarded-For": f"10.9.9.9, {appended}"})
        assert status == 429
        assert dict(gw.counts.by_address) == {"203.0.113.7": 2}
    finally:
        for ws in sockets:
            await ws.close()
        await gw.stop()


@pytest.mark.parametrize("gw", [{
    "proxy_headers": True, "max_connections_per_address": 3, "handshake_rate": 0.01, "handshake_burst": 6,
    "handshake_rate_per_address": 0.01, "handshake_burst_per_address": 4,
}], indirect=True)
async def test_one_address_cannot_spend_the_node_handshake_budget(gw: Gateway) -> None:
    def from_(address: str) -> dict[str, object]:
        return {"additional_headers": {"X-Forwarded-For": address}}

    greedy = [await connect(f"{gw.url}/ws/r", **from_("198.51.100.1")) for _ in range(3)]  # type: ignore[arg-type]
    try:
        for _ in range(10):  # at its connection cap: refused before any node-wide budget is spent
            assert (await refusal(f"{gw.url}/ws/r", **from_("198.51.100.1")))[0] == 429
        await greedy.pop().close()
        await asyncio.sleep(0.1)
        # One handshake left in its own burst of 4, then its own rate refuses it.
        greedy.append(await connect(f"{gw.url}/ws/r", **from_("198.51.100.1")))  # type: ignore[arg-type]
        await greedy.pop().close()
        await asyncio.sleep(0.1)
        status, headers, body = await refusal(f"{gw.url}/ws/r", **from_("198.51.100.1"))
        assert (status, body) == (429, "too many new connections from this address\n")
        assert int(headers["Retry-After"]) >= 1
        # The node-wide burst of 6 still has 2 for everyone else.
        async with connect(f"{gw.url}/ws/r", **from_("203.0.113.9")) as other:  # type: ignore[arg-type]
            assert msgpack.unpackb(await other.recv())["t"] == "snapshot"
        assert counted(gw, "refusals", "address_full") == 10
        assert counted(gw, "refusals", "address_rate") == 1
        assert counted(gw, "refusals", "handshake_rate") == 0
    finally:
        for ws in greedy:
            await ws.close()


async def test_a_bug_in_admission_is_a_counted_and_logged_500_without_a_traceback(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(token: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gw.auth, "verify", broken)
    with caplog.at_level(logging.ERROR, logger="stockwire"):
        status, _, body = await refusal(f"{gw.url}/ws/r?role=host&token=x")
    assert (status, body) == (500, "internal error\n")
    assert counted(gw, "refusals", "internal_error") == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "request.failed"]
    assert record.exc_info is not None
    assert "a bug" in str(record.exc_info[1])
    async with Screen(f"{gw.url}/ws/r") as viewer:  # viewers need no token: still served
        await viewer.until(lambda s: s.frames)


async def test_a_crash_while_serving_a_client_closes_it_1011_and_is_counted(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(client: object) -> None:
        raise RuntimeError("resync bug")

    async with Screen(f"{gw.url}/ws/r") as crashing, Screen(f"{gw.url}/ws/r") as bystander:
        await crashing.until(lambda s: s.frames)
        await bystander.until(lambda s: s.frames)
        monkeypatch.setattr(gw.hub, "resync", broken)
        assert crashing.ws is not None
        with caplog.at_level(logging.ERROR, logger="stockwire"):
            await crashing.ws.send(msgpack.packb({"t": "resync"}))
            assert await crashing.closed() == CloseCode.INTERNAL_ERROR
        assert crashing.close_reason == "internal error"
        assert counted(gw, "client_closes", "internal_error") == 1
        assert any(r.getMessage() == "connection.failed" for r in caplog.records)
        assert bystander.close_code is None


@pytest.mark.parametrize("gw", [{"client_message_rate": 1, "client_message_burst": 5}], indirect=True)
async def test_websocket_pings_count_towards_the_message_rate(gw: Gateway) -> None:
    async with Screen(f"{gw.url}/ws/r") as pinger, Screen(f"{gw.url}/ws/r") as quiet:
        await pinger.until(lambda s: s.frames)
        assert pinger.ws is not None
        pongs = [asyncio.ensure_future(pinger.ws.ping()) for _ in range(20)]  # a flood, not a conversation
        assert await pinger.closed() == CloseCode.TOO_MANY_MESSAGES
        assert counted(gw, "client_closes", "too_many_messages") == 1
        assert quiet.close_code is None
        for pong in pongs:
            pong.cancel()


def masked_ping(payload: bytes) -> bytes:
    key = os.urandom(4)
    return bytes((0x89, 0x80 | len(payload))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("gw", [{"client_message_rate": 1e9, "client_message_burst": 10**9,
                                 "send_buffer_limit": 1024}], indirect=True)
async def test_a_peer_that_floods_pings_and_never_reads_is_cut_off(gw: Gateway) -> None:
    """Even with the message rate lifted, the pongs it never reads stay bounded."""
    loop = asyncio.get_running_loop()
    cap = 1 << 20  # max(4 * send_buffer_limit, 1 MiB)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)  # as on an internet path
    sock.setblocking(False)
    async with Screen(f"{gw.url}/ws/r") as bystander:
        await bystander.until(lambda s: s.frames)
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        await loop.sock_sendall(sock, upgrade_request("/ws/r"))
        for _ in range(100):
            if len(gw._clients) == 2:
                break
            await asyncio.sleep(0.02)
        burst = masked_ping(b"p" * 125) * 1000
        sent = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(60):
                while sent < 100 * cap and counted(gw, "client_closes", "control_flood") == 0:
                    await loop.sock_sendall(sock, burst)
                    sent += len(burst)
        sock.close()
        assert counted(gw, "client_closes", "control_flood") == 1
        assert sent > cap
        for _ in range(100):
            if len(gw._clients) == 1:
                break
            await asyncio.sleep(0.02)
        assert len(gw._clients) == 1
        assert bystander.close_code is None


async def test_clients_that_arrive_during_a_drain_get_1012_at_once(redis_url: str) -> None:
    """Admitted before the drain began, but in the handler only after: no 1012 was
    scheduled for them, so they are closed as they arrive, not left to the end."""
    gw = Gateway(gateway_settings(redis_url))
    handle = gw._handle
    draining = asyncio.Event()

    async def late(ws: object) -> None:
        await draining.wait()
        await handle(ws)  # type: ignore[arg-type]

    gw._handle = late  # type: ignore[method-assign]
    await gw.start()
    try:
        async with Screen(f"{gw.url}/ws/r") as latecomer:  # 101 before the drain
            drain = asyncio.create_task(gw.drain(window=60))
            await asyncio.sleep(0.05)
            assert gw.draining
            draining.set()
            assert await latecomer.closed(10) == CloseCode.SERVICE_RESTART
            await asyncio.wait_for(drain, 10)  # nobody left: the drain ends long before 60 s
        assert counted(gw, "client_closes", "service_restart") == 1
    finally:
        await gw.stop()


async def test_stopping_during_a_drain_cancels_the_1012s_and_closes_the_rest_1001(gw: Gateway) -> None:
    screens = [Screen(f"{gw.url}/ws/r") for _ in range(4)]
    for s in screens:
        await s.__aenter__()
        await s.until(lambda s: s.frames)
    drain = asyncio.create_task(gw.drain(window=60))
    for _ in range(100):  # the first 1012 goes at 0 s; the next not before 15 s
        if any(s.close_code for s in screens):
            break
        await asyncio.sleep(0.02)
    drain.cancel()
    await asyncio.wait_for(gw.stop(), 10)
    codes = sorted([await s.closed(5) for s in screens])
    assert codes == [CloseCode.GOING_AWAY] * 3 + [CloseCode.SERVICE_RESTART]
    assert counted(gw, "client_closes", "going_away") == 3
    assert counted(gw, "client_closes", "service_restart") == 1
    for s in screens:
        await s.__aexit__()
