"""A screen on air longer than its token lives (``?token_url=``, clients/web/src/token.js).

The token endpoint belongs to the merchant's backend; here Playwright answers
it inside the browser (``route``), minting real tokens with the gateway's
secret, so the page, the gateway's expiry timer and its ``auth`` renewal are
all the real ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, WebSocket, expect

from clients.publisher import Publisher
from tests.conftest import token
from tests.web.conftest import LOAD_MS, PUBLISH_MS, RestartableGateway

TTL = 8


class TokenEndpoint:
    """``/session/stock-token``: a fresh host token per request, counted."""

    path = "/session/stock-token"

    def __init__(self, room: str) -> None:
        self.room = room
        self.served: list[float] = []

    async def handle(self, route: Route) -> None:
        self.served.append(time.time())
        body = json.dumps({"token": token("host", (self.room,), ttl=TTL)})
        await route.fulfill(status=200, content_type="application/json", body=body)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 1600, "height": 900}, locale="en-US")
    yield ctx
    await ctx.close()


async def open_host(context: BrowserContext, gw: RestartableGateway, room: str, first_token: str,
                    endpoint: TokenEndpoint) -> tuple[Page, list[WebSocket], list[str]]:
    # By path: the page's own URL ends with the token URL too, in its query string.
    await context.route(lambda url: urlsplit(url).path == endpoint.path, endpoint.handle)
    page = await context.new_page()
    sockets: list[WebSocket] = []
    errors: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{gw.http}/host/{room}?lang=en&token={first_token}&token_url={endpoint.path}")
    return page, sockets, errors


async def test_host_renews_its_token_and_stays_on_air_past_its_expiry(
    web_gateway: RestartableGateway, redis_url: str, context: BrowserContext
) -> None:
    endpoint = TokenEndpoint("t1")
    first = token("host", ("t1",), ttl=TTL)
    expires = int(time.time()) + TTL
    async with Publisher(redis_url) as pub:
        await pub.set("t1", "lip", 1000, initial=1000, name="Lipstick")
        page, sockets, errors = await open_host(context, web_gateway, "t1", first, endpoint)
        num = page.locator('.card[data-sku="lip"] .num')
        await expect(num).to_have_text("1,000", timeout=LOAD_MS)
        assert endpoint.served == []  # a valid token is used as it is

        # Past the first token's expiry: renewed over the same socket, never closed with 4401.
        await asyncio.sleep(max(0.0, expires + 1.5 - time.time()))
        assert len(endpoint.served) >= 1
        assert endpoint.served[0] < expires
        await expect(page.locator("#freshness")).to_have_attribute("data-state", "live")
        await pub.adjust("t1", "lip", -1)
        await expect(num).to_have_text("999", timeout=PUBLISH_MS)
        assert len(sockets) == 1, "the screen reconnected instead of renewing"
        assert not sockets[0].is_closed()
        assert errors == []


async def test_host_with_an_expired_token_fetches_a_fresh_one_before_connecting(
    web_gateway: RestartableGateway, redis_url: str, context: BrowserContext
) -> None:
    endpoint = TokenEndpoint("t2")
    stale = token("host", ("t2",), ttl=-60)
    async with Publisher(redis_url) as pub:
        await pub.set("t2", "tee", 300, initial=1000)
        page, sockets, errors = await open_host(context, web_gateway, "t2", stale, endpoint)
        await expect(page.locator('.card[data-sku="tee"] .num')).to_have_text("300", timeout=LOAD_MS)
        assert len(endpoint.served) == 1
        assert len(sockets) == 1  # the expired token was never offered
        assert stale not in sockets[0].url
        assert errors == []
