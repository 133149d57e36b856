"""A real 3-primary Redis Cluster and two gateway nodes: sharded pub/sub end to end.

Rooms are picked per shard so every primary holds some, and within each shard
some rooms are watched on both nodes and some on one, so "each node subscribes
only to the rooms its clients watch" and "both nodes converge on the same room"
can each fail on their own.  Then the faults: a primary restarted mid-stream,
a room's slot resharded under live screens, a primary failing over to its
replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from redis.crc import key_slot

from clients.publisher import Publisher
from gateway.brokers.redis import RedisBroker
from gateway.metrics import Metrics
from gateway.protocol import channel
from gateway.server import Gateway
from loadtest.redisprocs import NODE_TIMEOUT_MS
from tests.conftest import RedisClusterNodes, RedisServer, gateway_settings
from tests.screens import Screen

#: Per shard: rooms watched on both nodes, on node A only, on node B only.
PLAN = ("both", "both", "a", "b")


def plan_rooms(cluster: RedisClusterNodes, prefix: str) -> dict[str, str]:
    """Room -> where it is watched ("both", "a", "b"), PLAN's mix on every primary."""
    wanted = {node.port: list(PLAN) for node in cluster.nodes}
    rooms: dict[str, str] = {}
    i = 0
    while any(wanted.values()):
        name = f"{prefix}-{i}"
        todo = wanted[cluster.owner(channel(name)).port]
        if todo:
            rooms[name] = todo.pop()
        i += 1
    return rooms


def watched_on(rooms: dict[str, str], node: str) -> set[str]:
    return {room for room, where in rooms.items() if where in ("both", node)}


async def gateways(url: str, n: int = 2) -> list[Gateway]:
    nodes = [Gateway(gateway_settings(url, redis_cluster=True)) for _ in range(n)]
    for node in nodes:
        await node.start()
    return nodes


@contextlib.asynccontextmanager
async def screens_for(nodes: list[Gateway], rooms: dict[str, str]) -> AsyncIterator[list[tuple[str, Screen]]]:
    """(room, screen) for every room on every node that watches it, each past its snapshot."""
    opened: list[tuple[str, Screen]] = []
    try:
        for room, where in rooms.items():
            for name, node in zip(("a", "b"), nodes, strict=False):
                if where in ("both", name):
                    screen = Screen(f"{node.url}/ws/{room}")
                    opened.append((room, screen))
                    await screen.__aenter__()
                    await screen.until(lambda s: s.frames, timeout=10)
        yield opened
    finally:
        for _, screen in opened:
            await screen.__aexit__()


def readyz(node: Gateway) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/readyz", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def truth(pub: Publisher, rooms: Iterable[str]) -> dict[str, dict[str, int]]:
    return {room: {sku: r["qty"] for sku, r in (await pub.stock(room)).items()} for room in rooms}


async def converge(screens: list[tuple[str, Screen]], want: dict[str, dict[str, int]]) -> None:
    for room, screen in screens:
        await screen.until(lambda s, room=room: s.qty() == want[room], timeout=15)
        assert screen.violations == [], room
        assert screen.close_code is None, room


class Ticker:
    """Keeps setting SKU "n" of some rooms to a rising counter, tolerating refusals.

    ``confirmed[room]`` is the last value Redis accepted for that room.
    """

    def __init__(self, url: str, rooms: list[str]) -> None:
        self.url = url
        self.rooms = rooms
        self.confirmed: dict[str, int] = {}
        self.failures = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        # A flag, not only a cancellation: on Python 3.11 a cancellation that lands
        # as a timed call completes can be lost, and the loop would go on forever.
        self._stopping = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        value = 0
        async with Publisher(self.url, cluster=True) as pub:
            while not self._stopping:
                for room in self.rooms:
                    value += 1
                    try:
                        async with asyncio.timeout(2):
                            await pub.set(room, "n", value)
                        self.confirmed[room] = value
                    except Exception:  # a shard down or a slot moving: the stock service retries later
                        self.failures += 1
                await asyncio.sleep(0.02)

    async def advanced(self, rooms: Iterable[str], timeout: float = 10) -> dict[str, int]:
        """Wait until each room has a value confirmed after now; return those values."""
        start = dict(self.confirmed)
        deadline = time.monotonic() + timeout
        while any(self.confirmed.get(r, 0) <= start.get(r, 0) for r in rooms):
            assert time.monotonic() < deadline, f"publishing stalled: {self.confirmed}"
            await asyncio.sleep(0.02)
        return {room: self.confirmed[room] for room in rooms}


async def screens_reach(screens: list[tuple[str, Screen]], floor: dict[str, int]) -> None:
    for room, screen in screens:
        if room in floor:
            await screen.until(lambda s, room=room: s.qty().get("n", 0) >= floor[room], timeout=10)


async def test_rooms_spread_over_every_shard_and_both_nodes_converge(
    redis_cluster: RedisClusterNodes,
) -> None:
    redis_cluster.flush()
    rooms = plan_rooms(redis_cluster, "spread")
    nodes = await gateways(redis_cluster.url)
    try:
        async with screens_for(nodes, rooms) as screens:
            async with Publisher(redis_cluster.url, cluster=True) as pub:
                rng = random.Random(3)
                for _ in range(300):
                    await pub.set(rng.choice(list(rooms)), f"sku-{rng.randint(0, 5)}", rng.randint(0, 100))
                want = await truth(pub, rooms)
            await converge(screens, want)
            # Each node subscribed exactly to its own rooms, each on the primary owning it.
            for node, name in zip(nodes, ("a", "b"), strict=True):
                assert isinstance(node.broker, RedisBroker)
                assert node.broker.subscriptions() == {
                    room: redis_cluster.owner(channel(room)).name for room in watched_on(rooms, name)}
            for primary in redis_cluster.nodes:
                mine = [room for room in rooms if redis_cluster.owner(channel(room)) is primary]
                listed = primary.client().execute_command("PUBSUB", "SHARDCHANNELS")
                assert {c.decode() for c in listed} == {channel(room) for room in mine}
                for room in mine:
                    _, count = primary.client().execute_command("PUBSUB", "SHARDNUMSUB", channel(room))
                    assert count == (2 if rooms[room] == "both" else 1), room
    finally:
        for node in nodes:
            await node.stop()


async def test_a_primary_restarted_mid_stream(redis_cluster: RedisClusterNodes) -> None:
    """Rooms on the other shards keep updating through the outage, both nodes stay
    ready; after the restart (the node comes back empty) every screen converges."""
    redis_cluster.flush()
    rooms = plan_rooms(redis_cluster, "restart")
    victim = redis_cluster.nodes[1]
    lost = [r for r in rooms if redis_cluster.owner(channel(r)) is victim]
    kept = [r for r in rooms if r not in lost]
    nodes = await gateways(redis_cluster.url)
    try:
        async with screens_for(nodes, rooms) as screens:
            async with Ticker(redis_cluster.url, kept) as ticker, Ticker(redis_cluster.url, lost) as doomed:
                await screens_reach(screens, await ticker.advanced(kept))
                await doomed.advanced(lost)
                victim.stop()
                down_at = time.monotonic()
                try:
                    # Longer than cluster-node-timeout: the other primaries mark it failed.
                    while time.monotonic() - down_at < NODE_TIMEOUT_MS / 1000 + 1:
                        await screens_reach(screens, await ticker.advanced(kept))
                        assert [await asyncio.to_thread(readyz, n) for n in nodes] == [200, 200]
                    for node in nodes:
                        assert isinstance(node.broker, RedisBroker)
                        assert node.broker.shard_health() == {
                            p.name: p is not victim for p in redis_cluster.nodes}
                finally:
                    victim.start()  # same nodes.conf: it rejoins owning its slots, with no data
                redis_cluster.wait_ok()
                await doomed.advanced(lost, timeout=20)
            async with Publisher(redis_cluster.url, cluster=True) as pub:
                want = await truth(pub, rooms)
            assert all(want[room] for room in rooms)
            await converge(screens, want)
    finally:
        for node in nodes:
            await node.stop()


async def test_a_room_resharded_under_live_screens(redis_cluster: RedisClusterNodes) -> None:
    """CLUSTER SETSLOT … MIGRATING/IMPORTING, MIGRATE, SETSLOT NODE while publishing:
    both nodes move the room to its new primary, reload it and converge."""
    redis_cluster.flush()
    room = "resharded"
    slot = key_slot(channel(room).encode())
    source = redis_cluster.owner(channel(room))
    target = next(n for n in redis_cluster.nodes if n is not source)
    bystander = next(r for r in (f"bystander-{i}" for i in range(100))
                     if redis_cluster.owner(channel(r)) is source)
    rooms = {room: "both", bystander: "a"}
    nodes = await gateways(redis_cluster.url)
    try:
        async with screens_for(nodes, rooms) as screens:
            async with Ticker(redis_cluster.url, list(rooms)) as ticker:
                await screens_reach(screens, await ticker.advanced(rooms))
                await asyncio.to_thread(redis_cluster.move_slot, slot, target)
                await screens_reach(screens, await ticker.advanced(rooms))
                assert [await asyncio.to_thread(readyz, n) for n in nodes] == [200, 200]
            async with Publisher(redis_cluster.url, cluster=True) as pub:
                want = await truth(pub, rooms)
            await converge(screens, want)
            for node, name in zip(nodes, ("a", "b"), strict=True):
                assert isinstance(node.broker, RedisBroker)
                assert node.broker.subscriptions().get(room) == target.name, name
            assert _numsub(target, room) == 2
            assert _numsub(source, room) == 0
            assert _numsub(source, bystander) == 1
    finally:
        for node in nodes:
            await node.stop()
        await asyncio.to_thread(redis_cluster.move_slot, slot, source)


def _numsub(node: RedisServer, room: str) -> int:
    return int(node.client().execute_command("PUBSUB", "SHARDNUMSUB", channel(room))[1])


async def test_failover_to_a_replica(tmp_path: Path) -> None:
    """One primary dies for good: while its replica takes over, the node stays ready,
    rooms on the other shards keep updating and the metric shows the dead shard;
    afterwards the dead primary is dropped, the new one is used, and the room converges."""
    cluster = RedisClusterNodes(tmp_path)
    cluster.start()
    victim = cluster.nodes[1]
    replica = cluster.add_replica(victim)
    rooms = {next(r for r in (f"fo-{p.port}-{i}" for i in range(200))
                  if cluster.owner(channel(r)) is p): "a" for p in cluster.nodes}
    (lost,) = [r for r in rooms if cluster.owner(channel(r)) is victim]
    kept = [r for r in rooms if r != lost]
    metrics = Metrics()
    broker = RedisBroker(cluster.url, cluster=True, on_shard_state=metrics.shard_state)
    node = Gateway(gateway_settings(cluster.url, redis_cluster=True), broker=broker)
    await node.start()
    try:
        async with screens_for([node], rooms) as screens:
            async with Ticker(cluster.url, kept) as ticker:
                victim.stop()
                seen_down = False
                deadline = time.monotonic() + 30
                while replica.client().info("replication").get("role") != "master":
                    assert time.monotonic() < deadline, "the replica was never promoted"
                    await screens_reach(screens, await ticker.advanced(kept))
                    assert await asyncio.to_thread(readyz, node) == 200
                    down = f'stockwire_redis_shard_up{{shard="{victim.name}"}} 0.0'
                    seen_down = seen_down or down in metrics.render().decode()
                assert seen_down
            async with Publisher(cluster.url, cluster=True) as pub:
                for attempt in range(100):
                    try:
                        await pub.set(lost, "n", 7)
                        break
                    except Exception:
                        assert attempt < 99
                        await asyncio.sleep(0.1)
                want = await truth(pub, rooms)
            await converge(screens, want)
            healthy = {cluster.nodes[0].name: True, cluster.nodes[2].name: True, replica.name: True}
            while broker.shard_health() != healthy:
                assert time.monotonic() < deadline, broker.shard_health()
                await asyncio.sleep(0.05)
            assert broker.subscriptions()[lost] == replica.name
            assert await asyncio.to_thread(readyz, node) == 200
            text = metrics.render().decode()
            assert f'shard="{victim.name}"' not in text
            assert f'stockwire_redis_shard_up{{shard="{replica.name}"}} 1.0' in text
    finally:
        await node.stop()
        cluster.stop()
