"""The orchestration around Locust: refusing bad input, starting and stopping Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from loadtest.run import local_redis, main


@pytest.mark.parametrize("argv", [
    ["--host", "http://gw:8765", "--redis-url", "redis://r"],
    ["--host", "ws://gw:8765"],
])
def test_bad_targets_are_refused(argv: list[str], tmp_path: Path) -> None:
    assert main([*argv, "--results", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_local_redis_starts_and_stops(tmp_path: Path) -> None:
    with local_redis(tmp_path) as url:
        client = redis.Redis.from_url(url)
        assert client.ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
