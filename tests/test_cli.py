"""The stockwire command line, run as users run it: as a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

from gateway.cli import build_parser, settings_from
from tests.conftest import free_port
from tests.screens import Screen


async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


async def wait_for_port(port: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_flags_win_over_environment() -> None:
    os.environ["STOCKWIRE_INTERVAL"] = "0.5"
    try:
        args = build_parser().parse_args(["serve", "--port", "9001", "--send-buffer-limit", "4096"])
        s = settings_from(args)
        assert (s.port, s.send_buffer_limit, s.interval) == (9001, 4096, 0.5)
        args = build_parser().parse_args(["serve", "--interval", "0.25"])
        assert settings_from(args).interval == 0.25
    finally:
        del os.environ["STOCKWIRE_INTERVAL"]


async def test_demo_runs_a_flash_sale_without_redis() -> None:
    port = free_port()
    proc = await start("demo", "--port", str(port), "--duration", "3", "--rate", "300",
                       env={"STOCKWIRE_REDIS_URL": "redis://127.0.0.1:1/0"})
    try:
        assert proc.stdout is not None
        head = b""
        while b"WebSocket (host)" not in head:
            head += await asyncio.wait_for(proc.stdout.readline(), 10)
        host_url = re.search(rb"(ws://\S+role=host&token=\S+)", head)
        assert host_url is not None
        async with Screen(host_url.group(1).decode()) as screen:
            await screen.until(lambda s: len(s.items) == 4)
            before = sum(screen.qty().values())
            await screen.until(lambda s: sum(s.qty().values()) < before - 10)
            assert screen.violations == []
            assert {"lipstick-520", "tshirt-white-m"} <= set(screen.items)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
    text = (head + out).decode()
    assert proc.returncode == 0, text
    assert f"ws://127.0.0.1:{port}/ws/demo" in text
    assert "stockwire watch demo" in text
    assert re.search(r"\d+ orders", text)


async def test_serve_stops_cleanly_on_sigterm(redis_url: str) -> None:
    port = free_port()
    proc = await start("serve", "--port", str(port), "--drain-window", "0.5",
                       env={"STOCKWIRE_REDIS_URL": redis_url})
    try:
        await wait_for_port(port)
        async with Screen(f"ws://127.0.0.1:{port}/ws/r") as screen:
            await screen.until(lambda s: s.frames)
            proc.send_signal(signal.SIGTERM)
            assert await screen.closed(10) == 1012  # service restart: reconnect elsewhere
        await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()


async def test_publish_reports_refusals_with_exit_codes(redis_url: str) -> None:
    async def publish(*args: str) -> tuple[int, str]:
        proc = await start("publish", "room-9", *args, "--redis-url", redis_url)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    assert (await publish("a", "--set", "5", "--reserve", "3", "--platform-qty", "douyin=5"))[0] == 0
    code, out = await publish("a", "--adjust", "-2", "--platform", "douyin")
    assert (code, '"qty": 3' in out) == (0, True)
    assert (await publish("a", "--release", "4"))[0] == 3
    code, out = await publish("a", "--release", "3")
    assert (code, '"qty": 6' in out) == (0, True)
    assert (await publish("a", "--set", "1", "--version", "2"))[0] == 3
    assert (await publish("a", "--set", "1", "--safety", "1.5"))[0] == 2
    proc = await start("publish", "room-9", "a", "--set", "1", "--redis-url", "redis://127.0.0.1:1/0")
    out_bytes, _ = await proc.communicate()
    assert proc.returncode == 4
    assert "redis unreachable" in out_bytes.decode()


async def test_watch_once_prints_the_room_table(redis_url: str) -> None:
    from clients.publisher import Publisher
    from gateway.server import Gateway
    from tests.conftest import gateway_settings, token

    gw = Gateway(gateway_settings(redis_url))
    await gw.start()
    try:
        async with Publisher(redis_url) as pub:
            await pub.set("shop", "lipstick-520", 37, initial=500, name="Velvet")
        proc = await start("watch", "shop", "--url", gw.url, "--role", "host", "--once",
                           "--token", token())
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        await gw.stop()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "lipstick-520" in text
    assert "37" in text
    assert "Velvet" in text
