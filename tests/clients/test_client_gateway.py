"""The client SDK against a real gateway: how it takes the gateway's refusals."""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import InvalidStatus

from clients.client import PermanentError, StockClient, retry_after_seconds
from gateway.server import Gateway
from tests.conftest import gateway_settings

ROOM = "sdk-1"
WAIT = 10.0


@pytest.mark.parametrize(("status", "limits"), [
    (503, {"handshake_rate": 1.0, "handshake_burst": 1}),  # the node's handshake budget
    (429, {"handshake_rate_per_address": 1.0, "handshake_burst_per_address": 1}),  # one address's
])
async def test_a_refused_handshake_is_not_retried_before_retry_after(
    redis_url: str, status: int, limits: dict[str, float]
) -> None:
    gw = Gateway(gateway_settings(redis_url, **limits))
    await gw.start()
    loop = asyncio.get_running_loop()
    try:
        async with StockClient(gw.url, ROOM) as first:
            await first.wait_for(lambda c: c.snapshots == 1, WAIT)  # takes the only token
            # Backoff alone would retry within 10 ms, dozens of times before a token is back.
            started = loop.time()
            async with StockClient(gw.url, ROOM, backoff_initial=0.005, backoff_max=0.01) as second:
                await second.wait_for(lambda c: c.connect_failures == 1, WAIT)
                refusal = second.last_error
                assert isinstance(refusal, InvalidStatus)
                assert refusal.response.status_code == status
                wait = retry_after_seconds(refusal.response.headers.get("Retry-After"))
                assert wait is not None
                assert wait >= 1
                await second.wait_for(lambda c: c.snapshots == 1, wait + WAIT)
                assert loop.time() - started >= wait
                assert second.connect_failures == 1, "retried before Retry-After"
    finally:
        await gw.stop()


async def test_a_frame_the_gateway_refuses_as_too_big_is_not_sent_again(redis_url: str) -> None:
    gw = Gateway(gateway_settings(redis_url))
    await gw.start()
    try:
        async with StockClient(gw.url, ROOM, backoff_initial=0.005, backoff_max=0.01) as client:
            await client.wait_for(lambda c: c.snapshots == 1, WAIT)
            await client.renew("x" * 5000)  # over the gateway's 4096-byte client frame limit
            with pytest.raises(PermanentError) as info:
                await asyncio.wait_for(client.wait_closed(), WAIT)
            assert info.value.code == 1009
            assert client.connects == 1
    finally:
        await gw.stop()
