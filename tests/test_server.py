"""End to end: real redis-server, real gateway, real websocket clients."""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import msgpack
import pytest
import redis

from clients.publisher import Publisher
from gateway.protocol import CloseCode, channel, epoch_key, stock_key
from gateway.server import Gateway
from gateway.stock import Status
from tests.conftest import RedisServer, gateway_settings, token
from tests.screens import Screen


async def http_get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


def shard_subscribers(raw: redis.Redis, name: str) -> int:
    reply = raw.execute_command("PUBSUB", "SHARDNUMSUB", name)
    return int(reply[1])


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_cli_publish_reaches_clients_and_late_joiners_get_a_snapshot(
    gateway: Gateway, redis_url: str
) -> None:
    async with Screen(f"{gateway.url}/ws/live-1") as early:
        await early.until(lambda s: s.frames)
        assert early.frames[0]["t"] == "snapshot"
        code, out = await cli("publish", "live-1", "tee", "--set", "500", "--initial", "500",
                              "--name", "T-shirt", "--redis-url", redis_url)
        assert code == 0, out
        assert '"status": "ok"' in out
        await early.until(lambda s: s.qty() == {"tee": 500})
        code, out = await cli("publish", "live-1", "tee", "--adjust", "-501", "--redis-url", redis_url)
        assert code == 3
        assert '"insufficient"' in out
        async with Screen(f"{gateway.url}/ws/live-1?role=host&token={token()}") as late:
            await late.until(lambda s: s.frames)
            first = late.frames[0]
            assert first["t"] == "snapshot"
            assert first["items"][0]["qty"] == 500
            assert first["items"][0]["name"] == "T-shirt"


class StrictScreen(Screen):
    """A Screen that also flags a snapshot going back within its epoch.

    Across epochs a snapshot may go back (the data started over, §6); within
    one it never may.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.epoch: str | None = None

    def _apply(self, frame: dict[str, Any]) -> None:
        if frame["t"] == "snapshot":
            if frame["epoch"] == self.epoch:
                for item in frame["items"]:
                    old = self.items.get(item["sku"])
                    if old is not None and item["ver"] < old["ver"]:
                        self.violations.append(
                            f"snapshot took {item['sku']} back from {old['ver']} to {item['ver']}")
            self.epoch = frame["epoch"]
        super()._apply(frame)

    def state(self) -> dict[str, tuple[int, int]]:
        return {sku: (item["qty"], item["ver"]) for sku, item in self.items.items()}


#: Stores a record only if it is newer, but publishes it regardless: a sloppy
#: publisher replaying old records, so stale ones really travel through Redis.
RAW_PUBLISH = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored or cmsgpack.unpack(stored).ver < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return redis.call('SPUBLISH', KEYS[2], ARGV[3])
"""


async def truth_of(pub: Publisher, room: str) -> dict[str, tuple[int, int]]:
    return {sku: (r["qty"], r["ver"]) for sku, r in (await pub.stock(room)).items()}


async def test_concurrent_out_of_order_publishing_converges(
    gateway: Gateway, redis_server: RedisServer
) -> None:
    room, skus, raw_skus = "sale", [f"sku-{i}" for i in range(60)], [f"raw-{i}" for i in range(20)]
    published = 0
    async with Publisher(redis_server.url) as pub:
        for sku in skus:
            await pub.set(room, sku, 1000, initial=1000, reserve=200)
        await pub.set(room, "hot", 50, initial=50)
        epoch = (await asyncio.to_thread(redis_server.client().get, epoch_key(room))).decode()
        screens = [StrictScreen(f"{gateway.url}/ws/{room}") for _ in range(3)]
        screens.append(StrictScreen(f"{gateway.url}/ws/{room}?role=host&token={token()}"))
        for s in screens:
            await s.__aenter__()

        async def stock_service(seed: int) -> None:
            nonlocal published
            rng = random.Random(seed)
            for _ in range(1100):
                sku, roll = rng.choice(skus), rng.random()
                if roll < 0.85:
                    result = await pub.adjust(room, sku, -rng.randint(1, 30))
                elif roll < 0.95:
                    result = await pub.set(room, sku, rng.randint(0, 1000))
                else:
                    result = await pub.release(room, sku, rng.randint(1, 20))
                published += result.ok

        async def sell_out() -> None:
            """One SKU sold one unit at a time to zero, then an order refused."""
            nonlocal published
            for _ in range(50):
                published += (await pub.adjust(room, "hot", -1)).ok
            assert (await pub.adjust(room, "hot", -1)).status is Status.INSUFFICIENT

        async def raw_publisher() -> None:
            """Whole records straight onto the channel: shuffled, with duplicates."""
            nonlocal published
            rng = random.Random(99)
            raw = redis_server.client()
            script = raw.register_script(RAW_PUBLISH)
            records = [(sku, ver) for sku in raw_skus for ver in range(1, 31)]
            records += rng.sample(records, 150)  # duplicates
            rng.shuffle(records)
            for sku, ver in records:
                now_ms = int(time.time() * 1000)
                record = msgpack.packb({"sku": sku, "qty": 1000 - ver, "ver": ver, "ts": now_ms, "ep": epoch})
                receivers = await asyncio.to_thread(
                    script, keys=[stock_key(room), channel(room)], args=[sku, ver, record])
                assert receivers == 1  # the gateway got it, out of order or not
                published += 1
                if ver % 8 == 0:
                    await asyncio.sleep(0)

        workers = [asyncio.create_task(stock_service(seed)) for seed in range(5)]
        workers.append(asyncio.create_task(raw_publisher()))
        workers.append(asyncio.create_task(sell_out()))
        await asyncio.sleep(0.3)
        late = StrictScreen(f"{gateway.url}/ws/{room}")  # joins mid-stream: snapshot, then updates
        await late.__aenter__()
        await asyncio.gather(*workers)
        truth = await truth_of(pub, room)
    try:
        assert published >= 5000
        assert set(truth) == {*skus, *raw_skus, "hot"}
        assert {sku: truth[sku] for sku in raw_skus} == {sku: (970, 30) for sku in raw_skus}
        assert truth["hot"] == (0, 51)
        for s in [*screens, late]:
            await s.until(lambda s: s.state() == truth, timeout=30)
            assert s.violations == []
            assert s.items["hot"]["st"] == "out"
        assert gateway.metrics.updates_discarded._value.get() > 0  # stale ones reached it
    finally:
        for s in [*screens, late]:
            await s.__aexit__()


async def test_a_flush_while_connected_converges_to_the_reseeded_truth(
    gateway: Gateway, redis_server: RedisServer
) -> None:
    host_url = f"{gateway.url}/ws/flush?role=host&token={token()}"
    async with Publisher(redis_server.url) as pub, StrictScreen(f"{gateway.url}/ws/flush") as viewer, \
            StrictScreen(host_url) as host:
        await pub.set("flush", "x", 100, initial=100)
        for _ in range(9):
            await pub.adjust("flush", "x", -1)
        await viewer.until(lambda s: s.state() == {"x": (91, 10)})
        old_epoch = viewer.epoch
        redis_server.client().flushall()  # the gateway's connections stay up
        await pub.set("flush", "x", 42, initial=100)  # re-seeded: lower versions
        await pub.set("flush", "y", 7)
        await pub.adjust("flush", "y", -1)
        truth = await truth_of(pub, "flush")
        assert truth == {"x": (42, 1), "y": (6, 2)}
        new_epoch = (await asyncio.to_thread(redis_server.client().get, epoch_key("flush"))).decode()
        assert new_epoch != old_epoch
        for screen in (viewer, host):
            await screen.until(lambda s: s.state() == truth, timeout=10)
            assert screen.epoch == new_epoch
            assert screen.violations == []
            assert screen.close_code is None
        async with StrictScreen(f"{gateway.url}/ws/flush") as late:
            await late.until(lambda s: s.frames)
            assert late.frames[0]["epoch"] == new_epoch
            assert late.state() == truth


async def test_sell_out_is_sent_before_the_next_tick(redis_url: str) -> None:
    gw = Gateway(gateway_settings(redis_url, interval=10.0))
    await gw.start()
    try:
        async with Publisher(redis_url) as pub, Screen(f"{gw.url}/ws/r") as screen:
            await pub.set("r", "hot", 100, initial=100)
            await screen.until(lambda s: s.qty() == {"hot": 100})
            await pub.adjust("r", "hot", -10)  # same tier, inside the 10 s interval: held
            await pub.adjust("r", "hot", -90)  # sold out: goes out at once
            await screen.until(lambda s: s.qty() == {"hot": 0}, timeout=5)
            assert screen.items["hot"]["st"] == "out"
    finally:
        await gw.stop()


def stalled_socket(port: int, path: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


def masked(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x82, 0x80 | len(payload))) + key + body


async def test_a_client_that_stops_reading_is_bounded_and_closed(redis_url: str) -> None:
    limit = 64 * 1024
    gw = Gateway(gateway_settings(redis_url, send_buffer_limit=limit, slow_client_timeout=1.0,
                                  client_message_rate=10_000, client_message_burst=10_000))
    await gw.start()
    try:
        async with Publisher(redis_url) as pub:
            for i in range(50):
                await pub.set("big", f"sku-{i}", 100, name="长" * 200)
            async with Screen(f"{gw.url}/ws/big?role=host&token={token()}") as normal:
                await normal.until(lambda s: len(s.items) == 50)
                sock = stalled_socket(gw.port, f"/ws/big?role=host&token={token()}")
                resync = masked(msgpack.packb({"t": "resync"}))
                # Each resync asks for a ~30 KB snapshot; the socket never reads them.
                for _ in range(400):
                    await asyncio.to_thread(sock.sendall, resync)
                for _ in range(100):
                    if gw.hub.lagging:
                        break
                    await asyncio.sleep(0.05)
                await pub.adjust("big", "sku-0", -1)
                await normal.until(lambda s: s.qty()["sku-0"] == 99)
                room = gw.hub.rooms["big"]
                (stalled,) = [c for c in room.clients["host"] if c.lagging_since is not None]
                snapshot_size = len(room.snapshots.get("host", b"")) or 40_000
                assert stalled.buffered() <= limit + snapshot_size
                await pub.adjust("big", "sku-0", -1)
                await normal.until(lambda s: s.qty()["sku-0"] == 98)
                for _ in range(100):
                    if gw.metrics.client_closes.labels("slow_client")._value.get() == 1:
                        break
                    await asyncio.sleep(0.1)
                assert gw.metrics.client_closes.labels("slow_client")._value.get() == 1
                assert normal.close_code is None
                assert normal.violations == []
                sock.close()
    finally:
        await gw.stop()


async def test_a_failed_first_load_is_retried_while_redis_stays_up(
    gateway: Gateway, redis_server: RedisServer
) -> None:
    raw = redis_server.client()
    raw.set(stock_key("wt"), "not a hash")  # the snapshot read fails with WRONGTYPE
    async with Screen(f"{gateway.url}/ws/wt") as screen:
        for _ in range(100):
            if gateway.metrics.load_failures._value.get() >= 1:
                break
            await asyncio.sleep(0.02)
        assert gateway.metrics.load_failures._value.get() >= 1
        assert screen.frames == []
        raw.delete(stock_key("wt"))  # fixed; pub/sub never dropped, so no resync comes
        async with Publisher(redis_server.url) as pub:
            await pub.set("wt", "x", 3)
        await screen.until(lambda s: s.qty() == {"x": 3}, timeout=10)
        assert screen.frames[0]["t"] == "snapshot"


class RawFrames:
    """Server-to-client websocket frames parsed off a raw socket (they are never masked)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.upgraded = False

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames: list[tuple[int, bytes]] = []
        if not self.upgraded:  # the HTTP 101 response comes first
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return frames
            assert self.buffer.startswith(b"HTTP/1.1 101")
            del self.buffer[:end + 4]
            self.upgraded = True
        while len(self.buffer) >= 2:
            opcode, n, offset = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if n == 126:
                if len(self.buffer) < 4:
                    break
                n, offset = int.from_bytes(self.buffer[2:4], "big"), 4
            elif n == 127:
                if len(self.buffer) < 10:
                    break
                n, offset = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < offset + n:
                break
            frames.append((opcode, bytes(self.buffer[offset:offset + n])))
            del self.buffer[:offset + n]
        return frames


async def test_a_stalled_client_that_reads_again_gets_a_fresh_snapshot(redis_url: str) -> None:
    limit = 64 * 1024
    gw = Gateway(gateway_settings(redis_url, send_buffer_limit=limit, slow_client_timeout=60.0,
                                  ping_interval=60.0, client_message_rate=10_000,
                                  client_message_burst=10_000))
    await gw.start()
    sock = None
    try:
        async with Publisher(redis_url) as pub, \
                Screen(f"{gw.url}/ws/lag?role=host&token={token()}") as normal:
            for i in range(50):
                await pub.set("lag", f"sku-{i}", 100, name="长" * 200)
            await normal.until(lambda s: len(s.items) == 50)
            sock = stalled_socket(gw.port, f"/ws/lag?role=host&token={token()}")
            resync = masked(msgpack.packb({"t": "resync"}))
            for _ in range(60):  # each asks for a ~30 KB snapshot that nobody reads
                if gw.hub.lagging:
                    break
                for _ in range(20):
                    await asyncio.to_thread(sock.sendall, resync)
                await asyncio.sleep(0.05)
            (stalled,) = gw.hub.lagging
            # Marked slow: what changes now reaches it only through a fresh snapshot.
            for _ in range(5):
                await pub.adjust("lag", "sku-7", -3)
            await normal.until(lambda s: s.qty()["sku-7"] == 85)
            assert stalled.lagging_since is not None
            assert stalled.buffered() <= limit + 40_000

            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            parser, items = RawFrames(), {}
            first_with_change: str | None = None
            deadline = loop.time() + 30

            async def received() -> list[tuple[int, bytes]]:
                assert sock is not None
                timeout = max(0.0, deadline - loop.time())
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), timeout)
                assert data, "the gateway dropped the connection instead of resuming it"
                return parser.feed(data)

            while items.get("sku-7", {}).get("qty") != 85:
                for opcode, payload in await received():
                    assert opcode != 0x8, "closed instead of resumed"
                    frame = msgpack.unpackb(payload) if opcode == 0x2 else {"t": "control"}
                    if frame["t"] == "snapshot":
                        items = {i["sku"]: i for i in frame["items"]}
                    elif frame["t"] == "update":
                        items.update({i["sku"]: i for i in frame["items"]})
                    if first_with_change is None and items.get("sku-7", {}).get("qty") == 85:
                        first_with_change = frame["t"]
            assert first_with_change == "snapshot"  # no increments while it lagged
            assert stalled.lagging_since is None
            assert not gw.hub.lagging

            await pub.adjust("lag", "sku-7", -5)  # and updates flow again
            while items["sku-7"]["qty"] != 80:
                for opcode, payload in await received():
                    if opcode == 0x2 and (frame := msgpack.unpackb(payload))["t"] == "update":
                        items.update({i["sku"]: i for i in frame["items"]})
            truth = await truth_of(pub, "lag")
            assert {sku: (i["qty"], i["ver"]) for sku, i in items.items()} == truth
            assert gw.metrics.client_closes.labels("slow_client")._value.get() == 0
            assert normal.violations == []
    finally:
        if sock is not None:
            sock.close()
        await gw.stop()


async def test_nothing_follows_the_gateways_close_frame(gateway: Gateway) -> None:
    """A client closed for a bad frame that never answers the close stays in its
    room until the close handshake times out; updates flushed meanwhile must not
    reach it (RFC 6455 §5.5.1: no data after a close frame)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.connect(("127.0.0.1", gateway.port))
    sock.setblocking(False)
    try:
        await loop.sock_sendall(sock, (
            b"GET /ws/after-close HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"))
        parser, frames = RawFrames(), []

        async def read_until(done: Any) -> None:
            while not done():
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
                assert data, "connection dropped before the close handshake timed out"
                frames.extend(parser.feed(data))

        async with Screen(f"{gateway.url}/ws/after-close") as bystander, \
                Publisher(gateway.settings.redis_url) as pub:
            await read_until(lambda: frames)  # the snapshot
            await loop.sock_sendall(sock, masked(b"\xc1"))  # not msgpack: bad frame
            await read_until(lambda: frames[-1][0] == 0x8)
            assert int.from_bytes(frames[-1][1][:2], "big") == CloseCode.BAD_FRAME
            viewers = gateway.hub.rooms["after-close"].clients["viewer"]
            (closing,) = viewers - clients_of(viewers, bystander)
            assert not closing.open  # still a member, no longer written to
            for qty in (3, 2, 1):
                await pub.set("after-close", "x", qty)
                await bystander.until(lambda s, q=qty: s.qty() == {"x": q})
            # Every flush that reached the bystander has written to this socket
            # too, if it was going to: drain what arrived.
            await asyncio.sleep(0.05)
            try:
                while data := sock.recv(1 << 16):
                    frames.extend(parser.feed(data))
            except BlockingIOError:
                pass
        assert frames[-1][0] == 0x8, [opcode for opcode, _ in frames]
        assert [opcode for opcode, _ in frames].count(0x8) == 1
    finally:
        sock.close()


def clients_of(clients: set[Any], screen: Screen) -> set[Any]:
    """The hub's client for ``screen``: the one whose socket's peer is the screen's."""
    assert screen.ws is not None
    local = screen.ws.local_address
    return {c for c in clients if c.transport.get_extra_info("peername") == local}


async def test_redis_restart_keeps_clients_and_converges(own_redis: RedisServer) -> None:
    gw = Gateway(gateway_settings(own_redis.url))
    await gw.start()
    try:
        host_url = f"{gw.url}/ws/r?role=host&token={token()}"
        async with Screen(f"{gw.url}/ws/r") as a, Screen(host_url) as b:
            async with Publisher(own_redis.url) as pub:
                for ver in range(20):
                    await pub.set("r", "x", 100 - ver, initial=100)
            await a.until(lambda s: s.qty() == {"x": 81})
            own_redis.stop()
            for _ in range(100):
                if (await http_get(f"http://127.0.0.1:{gw.port}/readyz"))[0] == 503:
                    break
                await asyncio.sleep(0.05)
            assert (await http_get(f"http://127.0.0.1:{gw.port}/readyz"))[0] == 503
            own_redis.start()  # empty: nothing is persisted
            async with Publisher(own_redis.url) as pub:
                await pub.set("r", "x", 42, initial=100)  # re-seeded at version 1
                await pub.set("r", "y", 7)
            for screen in (a, b):
                await screen.until(lambda s: s.qty() == {"x": 42, "y": 7}, timeout=10)
                assert screen.close_code is None
            assert a.items["x"]["ver"] == 1
            status, _ = await http_get(f"http://127.0.0.1:{gw.port}/readyz")
            assert status == 200
            assert gw.metrics.redis_reconnects._value.get() >= 1
    finally:
        await gw.stop()


async def test_malformed_publisher_messages_are_dropped(gateway: Gateway, redis_server: RedisServer) -> None:
    async with Screen(f"{gateway.url}/ws/r") as screen:
        await screen.until(lambda s: s.frames)
        raw = redis_server.client()
        raw.spublish("stockwire:{r}:updates", b"\xc1")
        raw.spublish("stockwire:{r}:updates", msgpack.packb({"sku": "a", "qty": "many", "ver": 1, "ts": 1}))
        raw.spublish("stockwire:{r}:updates", b"\x80" * 20_000)
        async with Publisher(redis_server.url) as pub:
            await pub.set("r", "a", 3)
        await screen.until(lambda s: s.qty() == {"a": 3})
        dropped = gateway.metrics.messages_dropped
        assert {r: dropped.labels(r)._value.get() for r in ("undecodable", "bad_field", "oversized")} == {
            "undecodable": 1, "bad_field": 1, "oversized": 1,
        }


@pytest.mark.parametrize(
    ("path", "send", "code"),
    [
        ("/ws/bad%20room", None, CloseCode.UNKNOWN_ROOM),
        ("/ws/" + "x" * 65, None, CloseCode.UNKNOWN_ROOM),
        ("/ws/r?role=admin", None, CloseCode.BAD_FRAME),
        ("/ws/r", msgpack.packb({"t": "subscribe", "room": "other"}), CloseCode.BAD_FRAME),
        ("/ws/r", "text is not allowed", CloseCode.BAD_FRAME),
        ("/ws/r", b"\x82" * 5000, CloseCode.MESSAGE_TOO_BIG),
    ],
)
async def test_bad_clients_are_closed_with_documented_codes(
    gateway: Gateway, path: str, send: bytes | str | None, code: int
) -> None:
    async with Screen(f"{gateway.url}/ws/r") as bystander, Screen(gateway.url + path) as bad:
        if send is not None:
            await bad.until(lambda s: s.frames)
            assert bad.ws is not None
            await bad.ws.send(send)
        assert await bad.closed() == code
        assert bad.close_reason
        async with Publisher(gateway.settings.redis_url) as pub:
            await pub.set("r", "still-served", 1)
        await bystander.until(lambda s: s.qty() == {"still-served": 1})


async def test_resync_and_ping_requests(gateway: Gateway) -> None:
    async with Screen(f"{gateway.url}/ws/r") as screen:
        await screen.until(lambda s: s.frames)
        assert screen.ws is not None
        await screen.ws.send(msgpack.packb({"t": "resync"}))
        await screen.ws.send(msgpack.packb({"t": "ping", "id": 7}))
        await screen.until(lambda s: len(s.frames) == 3)
        assert [f["t"] for f in screen.frames] == ["snapshot", "snapshot", "pong"]
        assert screen.frames[2]["id"] == 7


async def test_http_endpoints(gateway: Gateway) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    assert await http_get(base + "/healthz") == (200, "ok\n")
    assert (await http_get(base + "/readyz"))[0] == 200
    async with Screen(f"{gateway.url}/ws/r") as screen:
        await screen.until(lambda s: s.frames)
        status, body = await http_get(base + "/metrics")
    assert status == 200
    for name in ("stockwire_connections{audience=\"viewer\"} 1.0", "stockwire_frames_sent_total",
                 "stockwire_updates_received_total", "stockwire_flush_seconds",
                 "stockwire_redis_reconnects_total", "stockwire_publish_to_send_seconds_bucket",
                 "stockwire_redis_shard_up{shard="):
        assert name in body
    assert (await http_get(base + "/nope"))[0] == 404


async def test_room_subscription_ends_after_the_last_client_leaves(
    gateway: Gateway, redis_server: RedisServer
) -> None:
    raw = redis_server.client()
    async with Screen(f"{gateway.url}/ws/brief") as screen:
        await screen.until(lambda s: s.frames)
        assert shard_subscribers(raw, "stockwire:{brief}:updates") == 1
    for _ in range(100):
        if shard_subscribers(raw, "stockwire:{brief}:updates") == 0:
            break
        await asyncio.sleep(0.05)
    assert shard_subscribers(raw, "stockwire:{brief}:updates") == 0
    assert "brief" not in gateway.hub.rooms


async def test_viewer_counts_add_up_across_nodes_and_a_dead_node_drops_out(redis_url: str) -> None:
    nodes = [Gateway(gateway_settings(redis_url, stats_interval=0.2)) for _ in range(2)]
    for node in nodes:
        await node.start()
    viewers = [Screen(f"{nodes[i % 2].url}/ws/crowd") for i in range(5)]  # 3 on A, 2 on B
    host = Screen(f"{nodes[0].url}/ws/crowd?role=host&token={token()}")
    try:
        for s in [*viewers, host]:
            await s.__aenter__()
            await s.until(lambda s: s.frames)

        def viewer_count(s: Screen) -> int | None:
            stats = [f for f in s.frames if f["t"] == "stats"]
            return stats[-1]["viewers"] if stats else None

        await host.until(lambda s: viewer_count(s) == 5, timeout=10)
        stats_task = nodes[1].hub._stats
        assert stats_task is not None
        stats_task.cancel()  # node B goes silent, as a killed node would; its entry must expire
        await host.until(lambda s: viewer_count(s) == 3, timeout=10)
    finally:
        for s in [*viewers, host]:
            await s.__aexit__()
        for node in nodes:
            await node.stop()


async def test_keepalive_pings_everyone_and_drops_a_peer_that_went_silent(redis_url: str) -> None:
    gw = Gateway(gateway_settings(redis_url, ping_interval=0.4))
    await gw.start()
    try:
        async with Publisher(redis_url) as pub:
            await pub.set("ka", "lip", 10)
            # A websockets client answers pings by itself; the raw socket never does.
            async with Screen(f"{gw.url}/ws/ka") as answering:
                await answering.until(lambda s: "lip" in s.items)
                silent = stalled_socket(gw.port, "/ws/ka")
                silent.settimeout(5)
                received = b""
                while b"\x89\x00" not in received:  # the gateway's ping, after the snapshot
                    received += await asyncio.to_thread(silent.recv, 65536)
                for _ in range(100):
                    if gw.metrics.client_closes.labels("ping_timeout")._value.get() == 1:
                        break
                    await asyncio.sleep(0.05)
                assert gw.metrics.client_closes.labels("ping_timeout")._value.get() == 1
                # The close frame: 1011 and the reason.
                while b"keepalive ping timeout" not in received:
                    received += await asyncio.to_thread(silent.recv, 65536)
                assert b"\x88" in received
                assert (1011).to_bytes(2, "big") + b"keepalive" in received
                silent.close()
                await asyncio.sleep(1.0)  # more than two intervals: the answering one stays
                await pub.adjust("ka", "lip", -1)
                await answering.until(lambda s: s.qty()["lip"] == 9)
                assert answering.close_code is None
                assert len(gw.keepalive) == 1
    finally:
        await gw.stop()
