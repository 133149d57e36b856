"""The stockwire command line, run as users run it: as a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.cli import build_parser, settings_from
from gateway.protocol import CloseCode
from gateway.server import Gateway
from tests.conftest import JWT_SECRET, free_port, gateway_settings, token
from tests.screens import Screen


async def start(*args: str, env: dict[str, str] | None = None,
                unset: tuple[str, ...] = ()) -> asyncio.subprocess.Process:
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=environ,
    )


async def output(*args: str, **kwargs: object) -> tuple[int, str]:
    proc = await start(*args, **kwargs)  # type: ignore[arg-type]
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


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
        args = build_parser().parse_args(["serve", "--broker", "memory", "--urgent-interval", "0.05",
                                          "--proxy-hops", "2", "--handshake-rate-per-address", "7"])
        gateway = Gateway(settings_from(args))
        assert gateway.hub.config.urgent_interval == 0.05
        assert (gateway.settings.proxy_hops, gateway.address_handshakes.rate) == (2, 7.0)
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


async def test_token_opens_the_host_audience_of_its_room_and_no_other(redis_url: str) -> None:
    # Listing a public-key algorithm first must not matter: a secret signs HMAC.
    code, out = await output("token", "--role", "host", "--room", "live-1", "--ttl", "600",
                             env={"STOCKWIRE_JWT_SECRET": JWT_SECRET,
                                  "STOCKWIRE_JWT_ALGORITHMS": "RS256,HS256"})
    assert code == 0, out
    minted = out.strip()
    assert jwt.get_unverified_header(minted)["alg"] == "HS256"
    gw = Gateway(gateway_settings(redis_url))
    await gw.start()
    try:
        async with Screen(f"{gw.url}/ws/live-1?role=host&token={minted}") as host:
            await host.until(lambda s: s.frames)
            assert host.frames[0]["t"] == "snapshot"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{gw.url}/ws/live-2?role=host&token={minted}"):
                pass
        assert refused.value.response.status_code == 403
    finally:
        await gw.stop()


async def test_token_without_a_secret_says_so_and_exits_2() -> None:
    code, out = await output("token", "--role", "host", "--room", "r", unset=("STOCKWIRE_JWT_SECRET",))
    assert code == 2
    assert "no secret" in out
    assert "Traceback" not in out


async def test_publish_rejects_bad_input_with_exit_2_and_one_line(redis_url: str) -> None:
    for args in [
        ("bad room", "a", "--set", "1"),
        ("r", "a", "--set", "1", "--platform-qty", "douyin=x"),
        ("r", "a", "--set", "1", "--platform-qty", "douyin"),
        ("r", "a", "--set", "1", "--batch", "300=lots"),
        ("r", "a", "--set", "1", "--batch", "soon=5"),
    ]:
        code, out = await output("publish", *args, "--redis-url", redis_url)
        assert code == 2, (args, out)
        assert "Traceback" not in out, out
        assert len(out.strip().splitlines()) == 1, out
    assert "invalid room name" in (await output("publish", "bad room", "a", "--set", "1",
                                                "--redis-url", redis_url))[1]


async def test_watch_reports_a_refusal_without_a_traceback(redis_url: str) -> None:
    gw = Gateway(gateway_settings(redis_url))
    await gw.start()
    try:
        code, out = await output("watch", "shop", "--url", gw.url, "--role", "host", "--once")
        assert code == 3, out
        assert "host connections need a token" in out
        assert "Traceback" not in out
        code, out = await output("watch", "shop", "--url", gw.url, "--role", "host", "--once",
                                 "--token", token("host", ("other",)))
        assert (code, "token does not open this room" in out) == (3, True), out
    finally:
        await gw.stop()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_sigterm_closes_the_rest_1001_at_once_and_exits(redis_url: str, workers: int) -> None:
    port = free_port()
    proc = await start("serve", "--port", str(port), "--workers", str(workers), "--drain-window", "60",
                       env={"STOCKWIRE_REDIS_URL": redis_url})
    screens = [Screen(f"ws://127.0.0.1:{port}/ws/r") for _ in range(5)]
    try:
        await wait_for_port(port)
        for screen in screens:
            await screen.__aenter__()
            await screen.until(lambda s: s.frames)
        proc.send_signal(signal.SIGTERM)
        # Each worker's first 1012 goes at once; its next is 12 s or more into the 60 s window.
        await asyncio.wait_for(asyncio.wait([asyncio.ensure_future(s.closed(10)) for s in screens],
                                            return_when=asyncio.FIRST_COMPLETED), 10)
        await asyncio.sleep(0.5)
        restarted = [s for s in screens if s.close_code is not None]
        proc.send_signal(signal.SIGTERM)
        codes = [await screen.closed(10) for screen in screens]
        assert {s.close_code for s in restarted} == {CloseCode.SERVICE_RESTART}
        assert len(restarted) <= workers
        assert sorted(codes) == [CloseCode.GOING_AWAY] * (5 - len(restarted)) + [
            CloseCode.SERVICE_RESTART] * len(restarted)
        await asyncio.wait_for(proc.wait(), 15)  # not the 60 s window
        assert proc.returncode == 0
    finally:
        for screen in screens:
            await screen.__aexit__()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
