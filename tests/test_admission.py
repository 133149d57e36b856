"""Who gets in: tokens, origins, connection caps and rate limits, end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

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
