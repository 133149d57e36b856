"""Fault 4: 1,000 clients that never read, beside 100 normal ones, during a surge.

The same surge runs twice against a fresh gateway process: once with only the
100 normal clients, once with 1,000 stalled sockets beside them.  Normal
clients' publish-to-receive latency must stay close to the first run's, and the
gateway's memory must stop growing once the stalled clients hit their bound.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import RedisServer, token
from tests.faults.conftest import GatewayNode, percentile, report, tracked_clients, until

pytestmark = pytest.mark.slow

NORMAL = 100
STALLED = 1_000
SKUS = 50
SURGE_SECONDS = 10.0
SURGE_RATE = 500.0  # updates per second across the SKUs
FLAGS = {"interval": 0.1, "send_buffer_limit": 65536, "slow_client_timeout": 5,
         "max_connections_per_address": 5000}
REPO = Path(__file__).resolve().parents[2]
#: Stalled screens are hosts: their frames carry whole records (~800 bytes per
#: SKU here), so they pass the 64 KiB bound within the surge; viewer frames
#: (~45 bytes per SKU) would take longer than the surge lasts.
HOST = token("host", ("surge-*",))


async def stalled_socket(port: int, path: str, source: str = "127.0.0.1") -> socket.socket:
    """Complete a websocket handshake, then never read again (tiny receive buffer).

    The MSS is capped at an internet path's 1400 bytes: loopback's 64 KiB MTU
    lets the kernel autotune the gateway's send buffer to ``tcp_wmem``'s max
    (4 MiB here, ~3 MB absorbed per stalled socket), which would hide the
    gateway's own bound for minutes; at 1400 the kernel holds ~70 KB.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 1024)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Run:
    stalled: int
    latencies: list[int] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    lagging: list[tuple[float, float]] = field(default_factory=list)
    updates: int = 0
    slow_closes: float = 0
    skips: float = 0
    normal_closed: int = 0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    def rss_mb(self, start: float, end: float) -> float:
        """Max RSS (MB) over the [start, end) fraction of the surge."""
        t0, t1 = self.rss[0][0], self.rss[-1][0]
        window = [r for t, r in self.rss if start <= (t - t0) / (t1 - t0) < end or (end == 1 and t == t1)]
        return max(window) / 2**20


async def surge_run(redis_url: str, node: GatewayNode, room: str, stalled: int) -> Run:
    run = Run(stalled)
    await node.start()
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.surge", redis_url, room, "--skus", str(SKUS),
        "--rate", str(SURGE_RATE), "--duration", str(SURGE_SECONDS),
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert publisher.stdin is not None
    assert publisher.stdout is not None
    socks: list[socket.socket] = []
    try:
        assert (await asyncio.wait_for(publisher.stdout.readline(), 30)).strip() == b"seeded"
        specs = [([node.url], {"seed": i}) for i in range(NORMAL)]
        async with tracked_clients(specs, room) as clients:
            await until(lambda: all(c.synced and len(c.items) == SKUS for c in clients), 30)
            for batch in range(0, stalled, 100):
                socks += await asyncio.gather(*(
                    stalled_socket(node.port, f"/ws/{room}?role=host&token={HOST}")
                    for _ in range(min(100, stalled - batch))
                ))
            for _ in range(100):  # the last handlers may still be joining
                if (await node.metrics()).value("stockwire_connections") == NORMAL + stalled:
                    break
                await asyncio.sleep(0.1)
            assert (await node.metrics()).value("stockwire_connections") == NORMAL + stalled

            async def sample() -> None:
                n = 0
                while True:
                    now = time.monotonic()
                    run.rss.append((now, node.rss_bytes()))
                    if n % 5 == 0:
                        m = await node.metrics()
                        run.lagging.append((now, m.value("stockwire_lagging_clients")))
                    n += 1
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            for c in clients:
                c.record_latency = True
            publisher.stdin.write(b"go\n")
            await publisher.stdin.drain()
            done = (await asyncio.wait_for(publisher.stdout.readline(), SURGE_SECONDS + 30)).split()
            for c in clients:
                c.record_latency = False
            sampler.cancel()
            assert done[0] == b"done", done
            run.updates, errors = int(done[1]), int(done[2])
            assert errors == 0
            for c in clients:
                run.latencies += c.latencies
            run.normal_closed = sum(c.connects != 1 or not c.connected for c in clients)
            m = await node.metrics()
            run.slow_closes = m.value("stockwire_client_closes_total", reason="slow_client")
            run.skips = m.value("stockwire_slow_client_skips_total")
    finally:
        for sock in socks:
            sock.close()
        if publisher.returncode is None:
            publisher.kill()
        await publisher.wait()
        node.terminate()
        await node.wait_exit()
    return run


async def test_stalled_clients_do_not_slow_the_others_and_memory_is_bounded(
    own_redis: RedisServer, gateway_nodes: Callable[..., GatewayNode]
) -> None:
    baseline = await surge_run(own_redis.url, gateway_nodes(own_redis.url, "base", **FLAGS),
                               "surge-base", 0)
    loaded = await surge_run(own_redis.url, gateway_nodes(own_redis.url, "stalled", **FLAGS),
                             "surge-stalled", STALLED)
    first_half, last_quarter = loaded.rss_mb(0, 0.5), loaded.rss_mb(0.75, 1)
    report(
        f"surge {SURGE_RATE:.0f} updates/s over {SKUS} SKUs for {SURGE_SECONDS:.0f} s, "
        f"{NORMAL} normal clients, --send-buffer-limit 65536 --slow-client-timeout 5",
        without_stalled=f"p50 {baseline.p(50):.0f} ms, p99 {baseline.p(99):.0f} ms "
                        f"({len(baseline.latencies)} samples, {baseline.updates} updates)",
        with_1000_stalled=f"p50 {loaded.p(50):.0f} ms, p99 {loaded.p(99):.0f} ms "
                          f"({len(loaded.latencies)} samples, {loaded.updates} updates)",
        ratio=f"p50 {loaded.p(50) / baseline.p(50):.2f}x, p99 {loaded.p(99) / baseline.p(99):.2f}x",
        gateway_rss_without=f"max {baseline.rss_mb(0, 1):.0f} MB",
        gateway_rss_with=f"first half max {first_half:.0f} MB, last quarter max {last_quarter:.0f} MB, "
                         f"max {loaded.rss_mb(0, 1):.0f} MB",
        lagging_clients_over_time=" ".join(f"{v:.0f}" for _, v in loaded.lagging),
        slow_client_closes=loaded.slow_closes,
        slow_client_skips=loaded.skips,
    )
    assert baseline.normal_closed == loaded.normal_closed == 0
    # The target is 2x (measured 1.0-1.6x on a quiet machine, ~2.1x with the
    # other core busy); the bound leaves room for a shared CI core, while a
    # gateway that let stalled clients block the loop would be off by seconds.
    assert loaded.p(99) <= max(3 * baseline.p(99), baseline.p(99) + 200)
    assert last_quarter <= first_half * 1.2 + 20
