"""Browser fixtures: Debian's Chromium driven by Playwright, and a gateway that can restart.

The pages are the real ones, served by a real gateway from ``clients/web``
(``make web`` builds the bundle), talking to a real redis-server.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from gateway.server import Gateway
from tests.conftest import gateway_settings, token

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "clients" / "web" / "dist"
DOCS_IMG = ROOT / "docs" / "img"
CHROMIUM = os.environ.get("STOCKWIRE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
#: How long a page may take to load and show its first snapshot (a cold browser on 2 cores).
LOAD_MS = 15_000
#: The issue's promise: a publish shows on screen within one second.
PUBLISH_MS = 1_000
#: Reconnecting: the backoff is jittered, capped at 10 s.
RECOVER_MS = 20_000


class RestartableGateway:
    """A gateway on a fixed port that a test can stop and start again, like a deploy."""

    def __init__(self, redis_url: str, **overrides: object) -> None:
        self.redis_url = redis_url
        self.overrides = overrides
        self.port = 0
        self.gateway: Gateway | None = None

    async def start(self) -> None:
        gw = Gateway(gateway_settings(self.redis_url, **{**self.overrides, "port": self.port}))
        await gw.start()
        self.port = gw.port
        self.gateway = gw

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def overlay(self, room: str, query: str = "") -> str:
        return f"{self.http}/overlay/{room}{'?' + query if query else ''}"

    def host(self, room: str, query: str = "", *, with_token: bool = True) -> str:
        params = [f"token={token('host', (room,))}"] if with_token else []
        if query:
            params.append(query)
        return f"{self.http}/host/{room}{'?' + '&'.join(params) if params else ''}"


@pytest.fixture
async def web_gateway(redis_url: str) -> AsyncIterator[RestartableGateway]:
    # Stats every 0.2 s so the host's pacing numbers settle quickly.
    gw = RestartableGateway(redis_url, stats_interval=0.2)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh")
    if not (DIST / "overlay.js").is_file() or not (DIST / "host.js").is_file():
        pytest.fail("the screens' bundle is missing: run `make web`")
    return CHROMIUM


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


OpenPage = Callable[..., Awaitable[Page]]


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """Open a URL in a fresh context; fails the test on any uncaught page error."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def opener(url: str, *, width: int = 1280, height: int = 720, locale: str = "en-US") -> Page:
        context = await browser.new_context(viewport={"width": width, "height": height}, locale=locale)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(url)
        return page

    yield opener
    for context in contexts:
        await context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def save_screenshot(path: Path, name: str) -> None:
    """Copy a screenshot into docs/img when STOCKWIRE_SCREENSHOTS=1 (see docs/screens.md)."""
    if os.environ.get("STOCKWIRE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / name)
