"""The host teleprompter in a real browser.

Only ``test_host_shows_velocity_eta_and_viewers_from_stats`` needs the gateway's
host ``stats`` frame (velocity, time to sell-out, viewers); the batch countdown
can also come from the item's own ``batches``, and everything else works from
snapshot and update frames.
"""

from __future__ import annotations

import re
import time

from playwright.async_api import Locator, Page, expect

from clients.publisher import Publisher
from tests.web.conftest import LOAD_MS, PUBLISH_MS, RECOVER_MS, OpenPage, RestartableGateway

PLATFORMS = {"douyin": 2500, "kuaishou": 1500, "taobao": 1000}


def card(page: Page, sku: str) -> Locator:
    return page.locator(f'.card[data-sku="{sku}"]')


async def pulse(locator: Locator) -> str:
    """The animation on the card's alert ring."""
    return await locator.evaluate("el => getComputedStyle(el, '::after').animationName")


async def test_host_shows_the_snapshot(web_gateway: RestartableGateway, redis_url: str,
                                       open_page: OpenPage) -> None:
    async with Publisher(redis_url) as pub:
        await pub.set("h1", "lip", 5000, initial=5000, reserve=800, platforms=PLATFORMS,
                      name="丝绒口红 #520 Velvet Lipstick")
        await pub.set("h1", "tee", 1000)  # no plan: no percentage, only ok or out
        page = await open_page(web_gateway.host("h1", "lang=en"), width=1600, height=900)
        lip = card(page, "lip")
        await expect(lip.locator(".num")).to_have_text("5,000", timeout=LOAD_MS)
        await expect(lip.locator(".name")).to_have_text("丝绒口红 #520 Velvet Lipstick")
        await expect(lip.locator(".pct")).to_have_text("100%")
        await expect(lip.locator(".initial")).to_have_text("/ 5,000")
        await expect(lip).to_have_attribute("data-alert", "ok")
        await expect(lip.locator(".alert-label")).to_have_text("IN STOCK")
        await expect(lip.locator(".reserve dd")).to_have_text("800")
        for platform, name, qty in [("douyin", "Douyin", "2,500"), ("kuaishou", "Kuaishou", "1,500"),
                                    ("taobao", "Taobao", "1,000")]:
            chip = lip.locator(f'.pf[data-platform="{platform}"]')
            await expect(chip).to_contain_text(name)
            await expect(chip.locator("b")).to_have_text(qty)
        tee = card(page, "tee")
        await expect(tee.locator(".num")).to_have_text("1,000")
        await expect(tee.locator(".pct")).to_have_text("—")
        await expect(tee.locator(".reserve dd")).to_have_text("—")
        await expect(tee.locator(".platforms")).to_be_hidden()
        await expect(page.locator("#room")).to_have_text("h1")
        await expect(page.locator("#notice")).to_be_hidden()

        # A sale on one platform: the total and that platform's split move within a second.
        await pub.adjust("h1", "lip", -3, platform="kuaishou")
        await expect(lip.locator(".num")).to_have_text("4,997", timeout=PUBLISH_MS)
        await expect(lip.locator('.pf[data-platform="kuaishou"] b')).to_have_text("1,497")


async def test_host_alerts_on_the_safety_line_with_colour_pulse_and_label(
    web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage
) -> None:
    async with Publisher(redis_url) as pub:
        await pub.set("h2", "lip", 1000, initial=1000, reserve=300, name="Lipstick")
        page = await open_page(web_gateway.host("h2", "lang=en"), width=1600, height=900)
        lip = card(page, "lip")
        await expect(lip).to_have_attribute("data-alert", "ok", timeout=LOAD_MS)
        assert await pulse(lip) == "none"
        ok_colour = await lip.locator(".alert").evaluate("el => getComputedStyle(el).color")

        await pub.adjust("h2", "lip", -810)  # 19 %: under the 20 % safety line
        await expect(lip).to_have_attribute("data-alert", "low", timeout=PUBLISH_MS)
        await expect(lip.locator(".alert-label")).to_have_text("LOW STOCK")
        await expect(lip.locator(".pct")).to_have_text("19%")
        assert await pulse(lip) == "pulse"
        assert await lip.locator(".alert").evaluate("el => getComputedStyle(el).color") != ok_colour
        await expect(page.locator("#cue")).to_have_attribute("data-kind", "low")
        await expect(page.locator("#cue-text")).to_have_text("Lipstick is running low: 190 left (19%)")

        await pub.adjust("h2", "lip", -150)  # 4 %: last call
        await expect(lip).to_have_attribute("data-alert", "critical", timeout=PUBLISH_MS)
        await expect(lip.locator(".alert-label")).to_have_text("LAST CALL")
        await expect(page.locator("#cue-text")).to_have_text("Last call! Lipstick: only 40 left")
        assert await pulse(lip) == "pulse"

        await pub.adjust("h2", "lip", -40)
        await expect(lip).to_have_attribute("data-alert", "out", timeout=PUBLISH_MS)
        await expect(lip.locator(".alert-label")).to_have_text("SOLD OUT")
        await expect(lip.locator(".num")).to_have_text("0")
        assert await pulse(lip) == "pulse-soft"
        # Sold out with reserve left: the prompt says to release it.
        await expect(page.locator("#cue")).to_have_attribute("data-kind", "release")
        await expect(page.locator("#cue-text")).to_have_text(
            "Lipstick is sold out: 300 in reserve to release")
        await expect(lip.locator(".reserve")).to_have_attribute("data-soon", "true")

        await pub.release("h2", "lip", 300)
        await expect(lip).to_have_attribute("data-alert", "ok", timeout=PUBLISH_MS)
        await expect(lip.locator(".num")).to_have_text("300")
        await expect(lip.locator(".reserve dd")).to_have_text("0")


async def test_host_counts_down_to_the_next_batch(web_gateway: RestartableGateway, redis_url: str,
                                                  open_page: OpenPage) -> None:
    now_ms = int(time.time() * 1000)
    batches = [{"at": now_ms + 3_600_000, "qty": 80}, {"at": now_ms + 90_000, "qty": 50},
               {"at": now_ms - 5_000, "qty": 10}]
    async with Publisher(redis_url) as pub:
        await pub.set("h3", "shoe", 0, initial=800, reserve=130, batches=batches, name="Runner 42")
        page = await open_page(web_gateway.host("h3", "lang=zh"), width=1600, height=900)
        shoe = card(page, "shoe")
        await expect(shoe.locator(".batch .q")).to_have_text("+50", timeout=LOAD_MS)
        await expect(shoe.locator(".batch .v")).to_have_text(re.compile(r"^1:(2\d|30)$"))
        await expect(shoe.locator(".alert-label")).to_have_text("已售罄")
        await expect(page.locator("#cue-text")).to_have_text(
            re.compile(r"^Runner 42 下一批 1:\d\d 后开抢，50 件$"))
        first = await shoe.locator(".batch .v").text_content()
        await expect(shoe.locator(".batch .v")).not_to_have_text(first or "", timeout=2_000)  # it ticks


async def test_host_freshness_turns_red_and_the_page_resyncs_after_a_restart(
    web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage
) -> None:
    async with Publisher(redis_url) as pub:
        await pub.set("h4", "lip", 1000, initial=1000, name="Lipstick")
        page = await open_page(web_gateway.host("h4", "lang=en"), width=1600, height=900)
        lip = card(page, "lip")
        freshness = page.locator("#freshness")
        await expect(lip.locator(".num")).to_have_text("1,000", timeout=LOAD_MS)
        await expect(freshness).to_have_attribute("data-state", "live")
        await expect(page.locator("#freshness-text")).to_have_text(re.compile(r"^updated \d+\.\d s ago$"))
        live_colour = await freshness.evaluate("el => getComputedStyle(el).backgroundColor")

        await web_gateway.stop()
        await expect(freshness).to_have_attribute("data-state", "down", timeout=RECOVER_MS)
        await expect(page.locator("#freshness-text")).to_contain_text("OFFLINE")
        await expect(page.locator("#freshness-text")).to_contain_text("last update")
        down_colour = await freshness.evaluate("el => getComputedStyle(el).backgroundColor")
        assert down_colour != live_colour
        red, green, blue = (int(c) for c in re.findall(r"\d+", down_colour)[:3])
        assert red > 100 > max(green, blue), down_colour

        await pub.adjust("h4", "lip", -900)  # while nobody watches: under the safety line
        await web_gateway.start()
        await expect(lip.locator(".num")).to_have_text("100", timeout=RECOVER_MS)
        await expect(lip).to_have_attribute("data-alert", "low")
        await expect(freshness).to_have_attribute("data-state", "live")
        await pub.adjust("h4", "lip", -1)
        await expect(lip.locator(".num")).to_have_text("99", timeout=PUBLISH_MS)


async def test_host_without_a_token_says_how_to_get_one(web_gateway: RestartableGateway,
                                                        open_page: OpenPage) -> None:
    page = await open_page(web_gateway.host("h5", "lang=en", with_token=False), width=1280, height=720)
    await expect(page.locator("#notice")).to_contain_text("needs a host token", timeout=LOAD_MS)
    await expect(page.locator("#freshness")).not_to_have_attribute("data-state", "live")


async def test_host_shows_velocity_eta_and_viewers_from_stats(
    web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage
) -> None:
    """Needs the gateway's host ``stats`` frame."""
    async with Publisher(redis_url) as pub:
        await pub.set("h6", "lip", 1000, initial=1000, name="Lipstick")
        await pub.set("h6", "tee", 500, initial=500, name="T-shirt")
        page = await open_page(web_gateway.host("h6", "lang=en"), width=1600, height=900)
        lip = card(page, "lip")
        await expect(lip.locator(".num")).to_have_text("1,000", timeout=LOAD_MS)
        await expect(page.locator("#viewers")).to_have_text("0", timeout=LOAD_MS)
        await expect(lip.locator(".vel .v")).to_have_text("0")
        await expect(lip.locator(".eta .v")).to_have_text("—")

        viewer = await open_page(web_gateway.overlay("h6"), width=400, height=300)
        await expect(viewer.locator(".badge")).to_have_count(2, timeout=LOAD_MS)
        await expect(page.locator("#viewers")).to_have_text("1", timeout=LOAD_MS)

        for _ in range(5):
            await pub.adjust("h6", "lip", -20)  # 100 units: 600/min over the 10 s minimum span
        await expect(lip.locator(".num")).to_have_text("900", timeout=PUBLISH_MS)
        # The exact pace is the gateway's business (600/min today); the page shows what it is sent.
        await expect(lip.locator(".vel .v")).to_have_text(re.compile(r"^[1-9][\d,]*$"), timeout=LOAD_MS)
        await expect(lip.locator(".eta .v")).to_have_text(re.compile(r"^\d+:\d\d$"))
        await expect(card(page, "tee").locator(".vel .v")).to_have_text("0")
        await expect(card(page, "tee").locator(".eta .v")).to_have_text("—")
        await expect(page.locator("#cue-text")).to_have_text(
            re.compile(r"^Lipstick is selling fastest: [1-9][\d,]*/min$"))
