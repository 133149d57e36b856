"""The exit code as an operator meets it: a short real rehearsal whose limits cannot be kept.

``tshirt-sellout`` at 60x (seven sale-minutes in 7 s) with 60 units and five
viewers: the sale itself is clean, but no screen can see an update's p99 or a
restock within a microsecond, so Locust must exit 1 and say which limits broke.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from loadtest.run import main as run_main
from tests.conftest import RedisServer


def test_a_broken_latency_limit_fails_the_run(own_redis: RedisServer, tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = run_main([
        "--scenario", "tshirt-sellout", "--redis-url", own_redis.url, "--results", str(tmp_path),
        "--", "--speed", "60", "--stock", "60", "--peak-viewers", "5", "--settle", "1",
        "--only-summary", "--max-p99-ms", "0.001", "--max-restock-seen-ms", "0.001",
    ])
    out, err = capfd.readouterr()
    log = out + err
    assert code == 1, log[-3000:]
    (folder,) = tmp_path.iterdir()
    with open(folder / "locust_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Nothing failed: the exit code is the limits' alone.
    assert sum(int(row["Failure Count"]) for row in rows) == 0
    assert "verdict: ok      failures 0/" in log
    assert "verdict: FAILED  ws-viewer update: p99" in log
    assert "verdict: FAILED  ws-viewer restock seen: max" in log
    assert "(restock limit 0.001 ms)" in log
    assert time.monotonic() - started < 60
