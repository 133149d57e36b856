"""The viewer overlay in a real browser: snapshot, live updates, low stock, sold out, restock, restarts."""

from __future__ import annotations

import pytest
from playwright.async_api import Locator, Page, expect

from clients.publisher import Publisher
from tests.web.conftest import LOAD_MS, PUBLISH_MS, RECOVER_MS, OpenPage, RestartableGateway

TEXT = {
    "en": {"left": "100 left", "later": "70 left", "low": "Only 15 left!", "out": "Sold out",
           "back": "40 left"},
    "zh": {"left": "剩余 100 件", "later": "剩余 70 件", "low": "仅剩 15 件！", "out": "已售罄",
           "back": "剩余 40 件"},
}


def badge(page: Page, sku: str) -> Locator:
    return page.locator(f'.badge[data-sku="{sku}"]')


@pytest.mark.parametrize(("lang", "query", "locale"), [
    ("en", "lang=en", "zh-CN"),  # ?lang= wins over the browser's language
    ("zh", "", "zh-CN"),  # no ?lang=: the browser's language
])
async def test_overlay_follows_the_sale(web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage,
                                        lang: str, query: str, locale: str) -> None:
    text = TEXT[lang]
    async with Publisher(redis_url) as pub:
        await pub.set("r1", "tee", 100, initial=100, reserve=40, name="T-shirt")
        await pub.set("r1", "cap", 500, initial=500)
        page = await open_page(web_gateway.overlay("r1", query), width=420, height=520, locale=locale)
        tee = badge(page, "tee")

        # The snapshot: every SKU, in SKU order.
        await expect(tee).to_have_attribute("data-qty", "100", timeout=LOAD_MS)
        await expect(tee).to_contain_text(text["left"])
        await expect(tee.locator(".name")).to_have_text("T-shirt")
        await expect(badge(page, "cap").locator(".name")).to_have_text("cap")  # no name: the SKU
        await expect(page.locator(".badge")).to_have_count(2)
        skus = await page.locator(".badge").evaluate_all("els => els.map(e => e.dataset.sku)")
        assert skus == ["cap", "tee"]

        # A sale shows within a second.
        await pub.adjust("r1", "tee", -30)
        await expect(tee).to_contain_text(text["later"], timeout=PUBLISH_MS)
        await expect(tee).to_have_attribute("data-st", "ok")
        # Viewer updates carry no name: the badge keeps the snapshot's.
        await expect(tee.locator(".name")).to_have_text("T-shirt")

        # Under the safety line (20 % of 100): emphasised.
        await pub.adjust("r1", "tee", -55)
        await expect(tee).to_have_attribute("data-st", "low", timeout=PUBLISH_MS)
        await expect(tee).to_contain_text(text["low"])

        # Sold out.
        await pub.adjust("r1", "tee", -15)
        await expect(tee).to_have_attribute("data-st", "out", timeout=PUBLISH_MS)
        await expect(tee).to_contain_text(text["out"])
        await expect(tee.locator(".n")).to_be_hidden()

        # The reserve comes back: back in stock, with the restock animation.
        await pub.release("r1", "tee", 40)
        await expect(tee).to_have_attribute("data-st", "ok", timeout=PUBLISH_MS)
        await expect(tee).to_contain_text(text["back"])
        await expect(tee).to_have_attribute("data-restocks", "1")
        await expect(tee).to_have_class("badge restocking")
        await expect(tee.locator(".name")).to_have_text("T-shirt")
        assert await badge(page, "cap").get_attribute("data-qty") == "500"


async def test_overlay_embeds_transparently_and_filters_skus(
    web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage
) -> None:
    async with Publisher(redis_url) as pub:
        await pub.set("r2", "a", 10, initial=10)
        await pub.set("r2", "b", 20, initial=20)
        url = web_gateway.overlay("r2", "bg=transparent&sku=b&lang=en")
        page = await open_page(url, width=360, height=240)
        await expect(badge(page, "b")).to_have_attribute("data-qty", "20", timeout=LOAD_MS)
        await expect(page.locator(".badge")).to_have_count(1)
        background = await page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        assert background == "rgba(0, 0, 0, 0)"
        await pub.adjust("r2", "a", -1)  # filtered out: never shown
        await pub.adjust("r2", "b", -1)
        await expect(badge(page, "b")).to_have_attribute("data-qty", "19", timeout=PUBLISH_MS)
        await expect(page.locator(".badge")).to_have_count(1)


async def test_overlay_recovers_after_the_gateway_restarts(
    web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage
) -> None:
    async with Publisher(redis_url) as pub:
        await pub.set("r3", "tee", 100, initial=100)
        page = await open_page(web_gateway.overlay("r3", "lang=en"), width=420, height=300)
        tee = badge(page, "tee")
        await expect(tee).to_have_attribute("data-qty", "100", timeout=LOAD_MS)
        await expect(page.locator("html")).to_have_attribute("data-conn", "up")

        await web_gateway.stop()
        # Down or between two attempts: either way no longer "up", and the badges dim.
        await expect(page.locator("html")).not_to_have_attribute("data-conn", "up", timeout=RECOVER_MS)
        assert float(await tee.evaluate("el => getComputedStyle(el).opacity")) < 1
        # Stock moves while the gateway is away: sold out and a new product.
        await pub.adjust("r3", "tee", -100)
        await pub.set("r3", "mug", 7, initial=50)
        await web_gateway.start()  # same port

        await expect(tee).to_have_attribute("data-st", "out", timeout=RECOVER_MS)
        await expect(tee).to_contain_text("Sold out")
        await expect(badge(page, "mug")).to_have_attribute("data-st", "low")
        await expect(page.locator("html")).to_have_attribute("data-conn", "up")
        await pub.adjust("r3", "mug", -1)
        await expect(badge(page, "mug")).to_have_attribute("data-qty", "6", timeout=PUBLISH_MS)
