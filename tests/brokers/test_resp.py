"""The pub/sub connection: RESP encoding, Redis URLs, and a real redis-server (with AUTH)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.brokers.redis import RedisBroker
from gateway.brokers.resp import Endpoint, PubSubConnection, encode_command
from gateway.protocol import channel
from gateway.stock import OpKind, StockOp
from tests.brokers.helpers import Recorder
from tests.conftest import RedisServer

PASSWORD = "s3cret:with@odd/chars"


class Collected(list[object]):
    """What a callback received, and a way to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self._grew = asyncio.Event()

    def add(self, item: object) -> None:
        self.append(item)
        self._grew.set()

    async def until(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self) < count:
                self._grew.clear()
                await self._grew.wait()


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that refuses everyone without the password."""
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode_command("SSUBSCRIBE", "stockwire:{r}:updates") == (
        b"*2\r\n$10\r\nSSUBSCRIBE\r\n$21\r\nstockwire:{r}:updates\r\n")
    assert encode_command("AUTH", b"\x00\xff", 7) == b"*3\r\n$4\r\nAUTH\r\n$2\r\n\x00\xff\r\n$1\r\n7\r\n"


@pytest.mark.parametrize(("url", "endpoint"), [
    ("redis://127.0.0.1:6380/0", Endpoint("127.0.0.1", 6380)),
    ("redis://redis.internal", Endpoint("redis.internal", 6379)),
    ("redis://:pw@h:1/3", Endpoint("h", 1, password="pw")),
    ("redis://me:p%40ss@h:2", Endpoint("h", 2, username="me", password="p@ss")),
    ("rediss://h:3", Endpoint("h", 3, tls=True)),
    ("unix:///run/redis.sock", Endpoint(path="/run/redis.sock")),
])
def test_endpoints_from_urls(url: str, endpoint: Endpoint) -> None:
    assert Endpoint.from_url(url) == endpoint


def test_a_cluster_node_keeps_the_credentials_and_tls() -> None:
    seed = Endpoint.from_url("rediss://me:pw@10.0.0.1:7000")
    assert seed.at("10.0.0.2", 7001) == Endpoint("10.0.0.2", 7001, username="me", password="pw", tls=True)
    assert seed.at("10.0.0.2", 7001).name == "10.0.0.2:7001"


def test_other_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="not a Redis URL"):
        Endpoint.from_url("http://127.0.0.1:6379")


async def test_subscribes_and_receives_pushes_with_auth(locked_redis: RedisServer) -> None:
    pushes, errors = Collected(), Collected()
    endpoint = Endpoint.from_url(locked_redis.url)
    assert endpoint.password == PASSWORD
    conn = await PubSubConnection.open(endpoint, pushes.add, errors.add)
    try:
        name = channel("r")
        conn.send("SSUBSCRIBE", name)
        await pushes.until(1)
        assert pushes[0] == [b"ssubscribe", name.encode(), 1]
        client = locked_redis.client()
        assert await asyncio.to_thread(client.execute_command, "SPUBLISH", name, b"\x81\xa1a\x01") == 1
        conn.send("PING")
        await pushes.until(3)
        assert pushes[1:] == [[b"smessage", name.encode(), b"\x81\xa1a\x01"], [b"pong", b""]]
        assert conn.received > 0
        assert errors == []
    finally:
        conn.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(conn.wait_closed(), 5)


async def test_a_wrong_or_missing_password_is_a_connection_error(locked_redis: RedisServer) -> None:
    for endpoint in (Endpoint("127.0.0.1", locked_redis.port, password="wrong"),
                     Endpoint("127.0.0.1", locked_redis.port)):
        with pytest.raises(ConnectionError, match="redis refused"):
            await PubSubConnection.open(endpoint, lambda push: None, lambda exc: None)


async def test_nobody_listening_is_a_connection_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # never started: its port is free
    with pytest.raises(ConnectionRefusedError):
        await PubSubConnection.open(Endpoint("127.0.0.1", server.port), lambda push: None, lambda exc: None)


async def test_error_replies_nobody_waits_for_go_to_on_error(redis_url: str) -> None:
    errors = Collected()
    conn = await PubSubConnection.open(Endpoint.from_url(redis_url), lambda push: None, errors.add)
    try:
        conn.send("SSUBSCRIBE")  # wrong number of arguments
        await errors.until(1)
        assert "wrong number of arguments" in str(errors[0])
    finally:
        conn.close()


async def test_a_connection_the_server_kills_ends_wait_closed(redis_server: RedisServer) -> None:
    conn = await PubSubConnection.open(Endpoint.from_url(redis_server.url), lambda push: None,
                                       lambda exc: None)
    conn.send("SSUBSCRIBE", channel("killed"))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(redis_server.client().execute_command, "CLIENT", "KILL", "TYPE", "pubsub")
    with pytest.raises(ConnectionError, match="lost"):
        await asyncio.wait_for(conn.wait_closed(), 5)


async def test_the_broker_works_against_a_redis_that_needs_a_password(locked_redis: RedisServer) -> None:
    """Commands (redis-py) and the pub/sub connection (ours) both authenticate."""
    broker = RedisBroker(locked_redis.url)
    rec = Recorder()
    await broker.start(rec)
    try:
        await rec.until(lambda: broker.ready)
        await broker.subscribe("locked")
        assert (await broker.execute("locked", StockOp(OpKind.SET, "a", 5))).ok
        await rec.until(lambda: rec.messages)
        assert [(room, r.qty) for room, r in rec.messages] == [("locked", 5)]
    finally:
        await broker.stop()
