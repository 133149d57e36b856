"""The orchestration around Locust: refusing bad input, starting and stopping Redis."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from loadtest.run import local_redis, main

ROOT = Path(__file__).resolve().parents[2]


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


def _make_loadtest(*args: str, env: dict[str, str]) -> str:
    """The command `make loadtest` would run (-n: printed, not run; -o install: no install step)."""
    done = subprocess.run(["make", "-n", "-o", "install", "loadtest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True, timeout=30)
    return done.stdout


def test_make_loadtest_takes_redis_url_only_from_its_command_line() -> None:
    env = {**os.environ, "REDIS_URL": "redis://exported.example:6379/0"}
    env.pop("HOST", None)
    # Exported (Heroku-style hosts set it): ignored, the rehearsal starts its own Redis.
    assert "--redis-url" not in _make_loadtest(env=env)
    given = _make_loadtest("REDIS_URL=redis://given.example:6379/0", env=env)
    assert "--redis-url redis://given.example:6379/0" in given
    assert "exported.example" not in given
