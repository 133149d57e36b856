"""Shared fixtures: real redis-server processes on free ports, and gateways."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gateway.auth import Authenticator
from gateway.server import Gateway
from gateway.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own that a test may stop and start again."""

    def __init__(self, workdir: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/ensure-redis.sh")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port < 55000:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


class RedisClusterNodes:
    """Three primaries, no replicas: a real Redis Cluster on loopback."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = []
        for i in range(3):
            port = cluster_port()
            node_dir = workdir / f"node{i}"
            node_dir.mkdir()
            self.nodes.append(RedisServer(node_dir, port, (
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no",
            )))

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        self.wait_ok()

    def wait_ok(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                try:
                    info = node.client().execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    states.append("cluster_state:ok" in text)
                except redis.ConnectionError:
                    states.append(False)
            if all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not become ok")

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster"))
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared test Redis, emptied for each test."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that only this test uses, so it can kill and restart it."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(role: str = "host", rooms: tuple[str, ...] = ("*",), ttl: float = 3600) -> str:
    """A token signed with the test gateways' secret."""
    return Authenticator(secret=JWT_SECRET).mint(role, rooms, ttl)  # type: ignore[arg-type]


def gateway_settings(redis_url: str, **overrides: object) -> Settings:
    options: dict[str, object] = {
        "host": "127.0.0.1", "port": 0, "redis_url": redis_url, "interval": 0.05,
        "room_grace": 0.5, "jwt_secret": JWT_SECRET,
    }
    options.update(overrides)
    return Settings(**options)  # type: ignore[arg-type]


@pytest.fixture
async def gateway(redis_url: str) -> AsyncIterator[Gateway]:
    gw = Gateway(gateway_settings(redis_url))
    await gw.start()
    yield gw
    await gw.stop()
