"""Fault 5: 10,000 handshakes with bad, expired or wrong-room tokens (and missing host tokens).

Raw HTTP upgrade requests over asyncio streams, 200 at a time: each one writes
the request and reads the status line.  (The listen backlog, STOCKWIRE_BACKLOG,
must hold such bursts without SYN retransmits; see the burst test below.)
Every one must be refused (401/403),
none admitted, every refusal counted, and a normal client keeps receiving
updates all along.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

from gateway.auth import Authenticator
from tests.conftest import RedisServer, token
from tests.faults.conftest import GatewayNode, Seller, report, tracked_clients, until

pytestmark = pytest.mark.slow

ROOM = "storm"
TOTAL = 10_000
BATCH = 200
#: The handshake rate limits (per node, and per address: every request here
#: comes from 127.0.0.1) would answer 503/429 long before 10,000; lift them so
#: the auth path itself is what is exercised.
FLAGS = {"handshake_rate": 100_000, "handshake_burst": 100_000,
         "handshake_rate_per_address": 100_000, "handshake_burst_per_address": 100_000}

FORGED = Authenticator(secret="not-the-gateway-secret-but-long-enough!").mint("host", [ROOM], 3600)
#: (label, request path, extra header lines, expected status, expected refusal reason)
KINDS = [
    ("garbage token", f"/ws/{ROOM}?token=not.a.jwt", "", 401, "invalid_token"),
    ("forged signature", f"/ws/{ROOM}?role=host&token={FORGED}", "", 401, "invalid_token"),
    ("expired host token", f"/ws/{ROOM}?role=host&token={token('host', (ROOM,), ttl=-60)}", "", 401,
     "expired_token"),
    ("wrong-room host token", f"/ws/{ROOM}?role=host&token={token('host', ('other-*',))}", "", 403,
     "wrong_room"),
    ("viewer token for the host audience", f"/ws/{ROOM}?role=host&token={token('viewer', (ROOM,))}", "",
     403, "wrong_role"),
    ("missing host token", f"/ws/{ROOM}?role=host", "", 401, "missing_token"),
    ("garbage bearer header", f"/ws/{ROOM}?role=host", "Authorization: Bearer x.y.z\r\n", 401,
     "invalid_token"),
]


async def handshake(port: int, path: str, headers: str, source: str = "127.0.0.1") -> int:
    """Write one upgrade request, read the status line; returns the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{headers}\r\n"
        ).encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(line.split(b" ", 2)[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_ten_thousand_bad_handshakes_are_all_refused_and_counted(
    own_redis: RedisServer, gateway_nodes: Callable[..., GatewayNode]
) -> None:
    node = await gateway_nodes(own_redis.url, "storm", **FLAGS).start()
    seller = Seller(own_redis.url, ROOM, [f"sku-{i}" for i in range(10)], pause=0.02)
    await seller.seed()
    async with tracked_clients([([node.url], {})], ROOM) as (normal,):
        await until(lambda: normal.synced and len(normal.items) == 10, 10)
        stop = asyncio.Event()
        selling = asyncio.create_task(seller.run(stop))
        await asyncio.sleep(0.5)

        update_times: list[float] = []
        normal.on_update = lambda event: update_times.append(time.monotonic())
        statuses: Counter[int] = Counter()
        by_kind: Counter[tuple[str, int]] = Counter()
        before, cpu_before = await node.metrics(), node.cpu_seconds()
        started = time.monotonic()
        for first in range(0, TOTAL, BATCH):
            kinds = [KINDS[i % len(KINDS)] for i in range(first, min(TOTAL, first + BATCH))]
            results = await asyncio.gather(*(handshake(node.port, path, headers)
                                             for _, path, headers, _, _ in kinds))
            statuses.update(results)
            by_kind.update((label, status) for (label, *_), status in zip(kinds, results, strict=True))
        elapsed = time.monotonic() - started
        ended, cpu = time.monotonic(), node.cpu_seconds() - cpu_before
        await asyncio.sleep(0.3)
        stop.set()
        await selling
        truth = await seller.truth()
        await until(lambda: normal.state() == truth, 10)

        metrics = await node.metrics()
        refusals = metrics.by_label("stockwire_handshake_refusals_total", "reason")
        during = [t for t in update_times if started <= t <= ended]
        gaps = [b - a for a, b in zip([started, *during], [*during, ended], strict=True)]
        lag = "stockwire_event_loop_lag_seconds"
        lag_ms = 1000 * (metrics.value(lag + "_sum") - before.value(lag + "_sum")) / max(
            1, metrics.value(lag + "_count") - before.value(lag + "_count"))
        report(
            f"{TOTAL} bad handshakes, {BATCH} at a time",
            took=f"{elapsed:.1f} s ({TOTAL / elapsed:.0f} refusals/s)",
            statuses=dict(statuses),
            refusals_total_by_reason=refusals,
            normal_client_updates_during_storm=len(during),
            normal_client_longest_gap_between_updates=f"{max(gaps) * 1000:.0f} ms",
            gateway_event_loop_lag_mean_during_storm=f"{lag_ms:.1f} ms",
            gateway_cpu_seconds_during_storm=f"{cpu:.1f} s",
        )
        assert set(statuses) <= {401, 403}, statuses
        assert sum(statuses.values()) == TOTAL
        for label, _, _, status, _ in KINDS:
            assert by_kind[(label, status)] == sum(n for (k, _), n in by_kind.items() if k == label), label
        expected = Counter()
        for i in range(TOTAL):
            expected[KINDS[i % len(KINDS)][4]] += 1
        assert refusals == dict(expected)
        assert sum(refusals.values()) == TOTAL
        assert metrics.value("stockwire_connections") == 1  # only the normal client got in
        assert normal.connects == 1
        assert normal.connected
        assert len(during) >= elapsed * 2, "the normal client stopped receiving during the storm"


async def test_one_address_flooding_handshakes_does_not_lock_out_the_others(
    own_redis: RedisServer, gateway_nodes: Callable[..., GatewayNode]
) -> None:
    """1,600 handshakes from one address against a node budget of 1,000: that
    address is refused 429 by its own budget (50/s, burst 100, the defaults)
    before it can spend the node's, so a client from another address gets in."""
    node = await gateway_nodes(own_redis.url, "flood", handshake_rate=10, handshake_burst=1000).start()
    statuses: Counter[int] = Counter()
    for _ in range(1600 // BATCH):
        statuses.update(await asyncio.gather(*(
            handshake(node.port, f"/ws/{ROOM}?token=not.a.jwt", "") for _ in range(BATCH))))
    other = await handshake(node.port, f"/ws/{ROOM}", "", source="127.0.0.2")
    refusals = (await node.metrics()).by_label("stockwire_handshake_refusals_total", "reason")
    report("1,600 handshakes from one address, node burst 1,000",
           statuses=dict(statuses), refusals_total_by_reason=refusals, other_address=other)
    assert set(statuses) == {401, 429}
    assert sum(statuses.values()) == 1600
    assert statuses[429] >= 1000
    assert other == 101
    assert refusals.get("handshake_rate", 0) == 0


async def timed_get(port: int, path: str) -> float:
    """GET ``path`` over a fresh connection; seconds from the connect until the status line."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        assert line.startswith(b"HTTP/1.1 200"), line
        return time.monotonic() - started
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_a_reconnect_burst_beyond_100_is_not_dropped_by_the_listen_backlog(
    own_redis: RedisServer, gateway_nodes: Callable[..., GatewayNode]
) -> None:
    """300 connects arrive while the node is busy for 0.2 s (a GC pause, a CPU spike during a
    reconnect storm); all should be answered promptly once it runs again."""
    node = await gateway_nodes(own_redis.url, "burst").start()
    node.signal_all(signal.SIGSTOP)
    try:
        tasks = [asyncio.create_task(timed_get(node.port, "/healthz")) for _ in range(300)]
        await asyncio.sleep(0.2)
    finally:
        node.signal_all(signal.SIGCONT)
    # Connects the kernel queued are answered within the 0.2 s pause plus a
    # little; a dropped one waits for its SYN retransmit, 1 s after the first.
    waits = sorted(await asyncio.gather(*tasks))
    dropped = sum(w >= 0.9 for w in waits)
    report("300 connects while the node is paused 0.2 s",
           connect_to_answer=f"p50 {waits[150]:.2f} s, max {waits[-1]:.2f} s",
           waited_for_a_syn_retransmit=dropped)
    assert dropped == 0, f"{dropped} of 300 connects were dropped by the listen backlog"
