"""The page URLs people type or paste: with or without a trailing slash, behind a prefix."""

from __future__ import annotations

import asyncio
import http.client

from playwright.async_api import expect

from clients.publisher import Publisher
from tests.conftest import token
from tests.web.conftest import LOAD_MS, PUBLISH_MS, OpenPage, RestartableGateway


def _get(port: int, path: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


async def test_a_trailing_slash_redirects_relatively_and_keeps_the_query(
    web_gateway: RestartableGateway,
) -> None:
    one = await asyncio.to_thread(_get, web_gateway.port, "/host/p1/?token=abc&lang=zh")
    assert one.status == 302
    # Relative, so a proxy prefix in front of /host survives the redirect.
    assert one.getheader("Location") == "../p1?token=abc&lang=zh"
    two = await asyncio.to_thread(_get, web_gateway.port, "/overlay/p1//")
    assert (two.status, two.getheader("Location")) == (302, "../../p1")
    plain = await asyncio.to_thread(_get, web_gateway.port, "/overlay/p1")
    assert plain.status == 200
    bad = await asyncio.to_thread(_get, web_gateway.port, "/overlay/no%20such/")
    assert bad.status == 404


async def test_pages_with_a_trailing_slash_load_their_bundle(
    web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage
) -> None:
    async with Publisher(redis_url) as pub:
        await pub.set("p2", "tee", 100, initial=100, name="T-shirt")
        host_token = token("host", ("p2",))
        host = await open_page(f"{web_gateway.http}/host/p2/?token={host_token}&lang=en")
        await expect(host.locator('.card[data-sku="tee"] .num')).to_have_text("100", timeout=LOAD_MS)
        assert host.url == f"{web_gateway.http}/host/p2?token={host_token}&lang=en"
        overlay = await open_page(f"{web_gateway.http}/overlay/p2/?lang=en")
        tee = overlay.locator('.badge[data-sku="tee"]')
        await expect(tee).to_have_attribute("data-qty", "100", timeout=LOAD_MS)
        await pub.adjust("p2", "tee", -1)
        await expect(tee).to_have_attribute("data-qty", "99", timeout=PUBLISH_MS)
        await expect(host.locator('.card[data-sku="tee"] .num')).to_have_text("99", timeout=PUBLISH_MS)
