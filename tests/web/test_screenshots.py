"""The screens as people see them: the demo's catalogue mid-sale, in English and Chinese.

Each run writes the screenshots into the test's temporary directory; with
``STOCKWIRE_SCREENSHOTS=1`` it also refreshes ``docs/img/`` (see docs/screens.md).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.async_api import expect

from clients.publisher import Publisher
from gateway.demo import CATALOGUE
from tests.web.conftest import LOAD_MS, OpenPage, RestartableGateway, save_screenshot

ROOM = "live-8801"
#: Where each product stands when the picture is taken: (quantity now, units sold in the last seconds).
SCENE = {
    "tshirt-white-m": (1234, [10, 12, 8]),
    "lipstick-520": (212, [("douyin", 15), ("kuaishou", 10), ("douyin", 12), ("taobao", 8)]),
    "sneaker-42": (0, []),
    "serum-30ml": (310, [6, 7, 7]),
}
PHONE = """<!doctype html><meta charset="utf-8"><style>
html, body {{ margin: 0; height: 100%; overflow: hidden; font-family: sans-serif; }}
body {{ background: radial-gradient(120% 80% at 70% 20%,
  #f9a8d4 0%, #c084fc 35%, #4c1d95 75%, #1e1b4b 100%); }}
.live {{ position: absolute; top: 18px; left: 16px; padding: 4px 10px; border-radius: 6px;
  background: #ff2d55; color: #fff; font: 700 13px sans-serif; letter-spacing: .06em; }}
.who {{ position: absolute; top: 18px; left: 78px; padding: 4px 10px; border-radius: 99px;
  background: rgba(0,0,0,.35); color: #fff; font: 600 13px sans-serif; }}
iframe {{ position: absolute; left: 0; bottom: 96px; width: 100%; height: 330px; border: 0; }}
.chat {{ position: absolute; left: 14px; right: 90px; bottom: 16px; color: #fff; font: 500 13px sans-serif;
  text-shadow: 0 1px 2px rgba(0,0,0,.5); line-height: 1.6; opacity: .9; }}
</style>
<div class="live">LIVE</div><div class="who">{who}</div>
<iframe src="{src}" allowtransparency="true"></iframe>
<div class="chat">{chat}</div>"""
CHAT = {
    "en": "<b>Mia</b> just bought 2 · <b>Leo</b> is the 520 still there?<br><b>Ann</b> grabbed the serum!",
    "zh": "<b>小雨</b> 刚刚下单 2 件 · <b>阿杰</b> 520 还有吗？<br><b>安安</b> 抢到精华液了！",
}


async def stage(pub: Publisher) -> None:
    now_ms = int(time.time() * 1000)
    for p in CATALOGUE:
        qty, _ = SCENE[p.sku]
        fields: dict[str, object] = {"name": p.name, "initial": p.initial, "reserve": p.reserve}
        if p.platforms:
            # Spread what is left over the platforms in their planned proportions.
            total = sum(p.platforms.values())
            split = {k: qty * v // total for k, v in p.platforms.items()}
            split[next(iter(split))] += qty - sum(split.values())
            fields["platforms"] = split
        if p.batches:
            fields["batches"] = [{"at": now_ms + 75_000 + i * 60_000, "qty": q}
                                 for i, (_, q) in enumerate(p.batches)]
        await pub.set(ROOM, p.sku, qty, **fields)


async def sell(pub: Publisher) -> None:
    for sku, (_, sales) in SCENE.items():
        for sale in sales:
            platform, units = sale if isinstance(sale, tuple) else (None, sale)
            await pub.adjust(ROOM, sku, -units, platform=platform)


@pytest.mark.parametrize("lang", ["en", "zh"])
async def test_screenshots(web_gateway: RestartableGateway, redis_url: str, open_page: OpenPage,
                           tmp_path: Path, lang: str) -> None:
    async with Publisher(redis_url) as pub:
        await stage(pub)
        host = await open_page(web_gateway.host(ROOM, f"lang={lang}"), width=1600, height=900)
        await expect(host.locator(".card")).to_have_count(4, timeout=LOAD_MS)
        # A phone-sized stand-in for the live video, with the overlay embedded as an iframe.
        # It is served on the gateway's own origin (intercepted, never reaching the gateway):
        # Chromium will not frame a loopback page from about:blank.
        mock = f"{web_gateway.http}/mock-live-video"
        html = PHONE.format(src=web_gateway.overlay(ROOM, f"lang={lang}&bg=transparent"), chat=CHAT[lang],
                            who="12.8万人在看" if lang == "zh" else "128k watching")
        phone = await open_page("about:blank", width=390, height=700)
        await phone.route(mock, lambda route: route.fulfill(content_type="text/html", body=html))
        await phone.goto(mock)
        frame = phone.frame_locator("iframe")
        await expect(frame.locator(".badge")).to_have_count(4, timeout=LOAD_MS)
        await expect(host.locator("#viewers")).to_have_text("1", timeout=LOAD_MS)
        await sell(pub)

        lipstick = host.locator('.card[data-sku="lipstick-520"]')
        await expect(lipstick.locator(".num")).to_have_text("167", timeout=LOAD_MS)
        await expect(lipstick).to_have_attribute("data-alert", "critical")
        await expect(lipstick.locator(".vel .v")).to_have_text(re.compile(r"^[1-9]"), timeout=LOAD_MS)
        await expect(host.locator('.card[data-sku="serum-30ml"] .vel .v')).to_have_text(re.compile(r"^[1-9]"))
        await expect(host.locator('.card[data-sku="sneaker-42"] .batch .q')).to_have_text("+50")
        await expect(frame.locator('.badge[data-sku="serum-30ml"]')).to_have_attribute("data-qty", "290")
        for p in CATALOGUE:  # names from the snapshot, kept through the sales' updates
            await expect(frame.locator(f'.badge[data-sku="{p.sku}"] .name')).to_have_text(p.name)

        for page, name in ((host, f"host-{lang}.png"), (phone, f"overlay-{lang}.png")):
            path = tmp_path / name
            await page.screenshot(path=path, animations="disabled")
            assert path.stat().st_size > 10_000
            save_screenshot(path, name)
