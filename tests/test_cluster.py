"""A real 3-primary Redis Cluster, two gateway nodes, sharded pub/sub."""

from __future__ import annotations

import asyncio
import random

from clients.publisher import Publisher
from gateway.server import Gateway
from tests.conftest import RedisClusterNodes, gateway_settings
from tests.screens import Screen

ROOMS = [f"live-{i}" for i in range(12)]


async def gateways(url: str, n: int = 2) -> list[Gateway]:
    nodes = [Gateway(gateway_settings(url, redis_cluster=True)) for _ in range(n)]
    for node in nodes:
        await node.start()
    return nodes


async def test_rooms_spread_over_every_shard_and_both_nodes_converge(
    redis_cluster: RedisClusterNodes,
) -> None:
    redis_cluster.flush()
    nodes = await gateways(redis_cluster.url)
    screens = [Screen(f"{nodes[i % 2].url}/ws/{room}") for i, room in enumerate(ROOMS * 2)]
    try:
        for s in screens:
            await s.__aenter__()
            await s.until(lambda s: s.frames)
        async with Publisher(redis_cluster.url, cluster=True) as pub:
            rng = random.Random(3)
            for _ in range(300):
                await pub.set(rng.choice(ROOMS), f"sku-{rng.randint(0, 5)}", rng.randint(0, 100))
            truth = {room: {sku: r["qty"] for sku, r in (await pub.stock(room)).items()} for room in ROOMS}
        for screen, room in zip(screens, ROOMS * 2, strict=True):
            await screen.until(lambda s, room=room: s.qty() == truth[room], timeout=10)
            assert screen.violations == []
        # Every primary holds some rooms, and each node subscribed only where its rooms live.
        holders = {node.port: len(node.client().execute_command("PUBSUB", "SHARDCHANNELS"))
                   for node in redis_cluster.nodes}
        assert all(count > 0 for count in holders.values()), holders
        assert {s for node in nodes for s in node.broker._room_shard} == set(ROOMS)  # type: ignore[attr-defined]
    finally:
        for s in screens:
            await s.__aexit__()
        for node in nodes:
            await node.stop()


async def test_a_cluster_node_restarted_mid_stream(redis_cluster: RedisClusterNodes) -> None:
    redis_cluster.flush()
    nodes = await gateways(redis_cluster.url)
    screens = [Screen(f"{nodes[i % 2].url}/ws/{room}") for i, room in enumerate(ROOMS)]
    try:
        for s in screens:
            await s.__aenter__()
            await s.until(lambda s: s.frames)
        async with Publisher(redis_cluster.url, cluster=True) as pub:
            for room in ROOMS:
                await pub.set(room, "a", 10)
            victim = redis_cluster.nodes[1]
            victim.stop()
            await asyncio.sleep(0.5)
            victim.start()  # same nodes.conf: it rejoins owning its slots, with no data
            redis_cluster.wait_ok()
        async with Publisher(redis_cluster.url, cluster=True) as pub:
            for room in ROOMS:  # the stock services re-seed every room
                for attempt in range(50):
                    try:
                        await pub.set(room, "a", 42)
                        break
                    except Exception:
                        if attempt == 49:
                            raise
                        await asyncio.sleep(0.1)
        for s in screens:
            await s.until(lambda s: s.qty() == {"a": 42}, timeout=15)
            assert s.close_code is None
    finally:
        for s in screens:
            await s.__aexit__()
        for node in nodes:
            await node.stop()
