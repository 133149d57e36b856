"""Shared fixtures: real redis-server processes on free ports, and gateways.

The process helpers live in :mod:`loadtest.redisprocs` (the scaling simulation
uses them too); they are re-exported here for the tests.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.auth import Authenticator
from gateway.server import Gateway
from gateway.settings import Settings
from loadtest.redisprocs import RedisClusterNodes, RedisServer, cluster_port, free_port

__all__ = ["RedisClusterNodes", "RedisServer", "cluster_port", "free_port"]


def _dump_tasks(name: str) -> None:
    """Print what every task of every running event loop is waiting on."""
    print(f"\n--- {name} is close to its timeout; its tasks: ---", file=sys.stderr)
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():
            for task in list(asyncio.all_tasks(obj)):
                task.print_stack(limit=6, file=sys.stderr)
    sys.stderr.flush()


@pytest.fixture(autouse=True)
def _report_hangs(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that hangs says where: shortly before pytest-timeout fails it, every
    task's stack goes to stderr (the timeout's own traceback shows only the
    event loop waiting in select)."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout"))
    timer = threading.Timer(max(1.0, limit - 5), _dump_tasks, (request.node.nodeid,))
    timer.daemon = True
    timer.start()
    yield
    timer.cancel()


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
