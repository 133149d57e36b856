"""A 30-second rehearsal: the whole Locust suite against a real gateway and Redis.

``tshirt-sellout`` compressed 16x (420 sale-seconds in about 26 s) with 300
units, 50 viewers and one host: it sells out, is restocked and sells on.  The
assertions are on Locust's own CSV and on counts the plan fixes exactly —
never on timings, so a busy machine makes the run slower, not red.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from loadtest import report
from loadtest.run import main as run_main
from loadtest.summary import summarize
from tests.conftest import RedisServer

STOCK = 300
VIEWERS = 50


def read_stats(folder: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(folder / "locust_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def count(rows: dict[tuple[str, str], dict[str, str]], kind: str, name: str) -> int:
    row = rows.get((kind, name))
    return int(row["Request Count"]) if row else 0


def test_tshirt_sellout_rehearsal(own_redis: RedisServer, tmp_path: Path) -> None:
    started = time.monotonic()
    code = run_main([
        "--scenario", "tshirt-sellout", "--redis-url", own_redis.url, "--results", str(tmp_path),
        "--", "--speed", "16", "--stock", str(STOCK), "--peak-viewers", str(VIEWERS),
        "--loglevel", "WARNING", "--only-summary",
    ])
    elapsed = time.monotonic() - started
    (folder,) = tmp_path.iterdir()
    log = (folder / "gateway.log").read_text()
    assert code == 0, f"locust exited {code}; gateway log:\n{log[-2000:]}"
    rows = read_stats(folder)
    failures = {key: row["Failure Count"] for key, row in rows.items() if int(row["Failure Count"])}
    assert failures == {}
    with open(folder / "locust_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []

    # Every viewer connected, got its snapshot and then a stream of updates.
    assert count(rows, report.VIEWER, report.CONNECT) >= VIEWERS
    assert count(rows, report.VIEWER, report.SNAPSHOT) >= VIEWERS
    assert count(rows, report.VIEWER, report.UPDATE) > VIEWERS * 10
    # The sale went exactly to plan: 3,300 orders against 3,000 units, scaled to 300.
    assert count(rows, report.STOCK, report.OPEN) == 1
    assert count(rows, report.STOCK, "order") == STOCK
    assert count(rows, report.STOCK, report.SOLD_OUT) == STOCK // 10
    assert count(rows, report.STOCK, "restock") == 1
    assert count(rows, report.STOCK, "order after restock") == STOCK // 4
    # The sell-out and the restock reached the screens.
    assert count(rows, report.VIEWER, report.SOLD_OUT_SEEN) >= 1
    assert count(rows, report.VIEWER, report.RESTOCK_SEEN) >= 1
    assert count(rows, report.HOST, report.SOLD_OUT_SEEN) == 1
    assert count(rows, report.HOST, report.RESTOCK_SEEN) == 1
    assert count(rows, report.HOST, report.alert_seen("out")) == 1
    assert count(rows, report.HOST, report.STATS) > 0
    # And at the end every screen still open matched Redis (80% of the audience stays).
    assert count(rows, report.CHECK, f"{report.FINAL_STATE} (viewer)") == VIEWERS * 8 // 10
    assert count(rows, report.CHECK, f"{report.FINAL_STATE} (host)") == 1

    summary = summarize(folder)
    assert f"| ws-viewer | {report.SOLD_OUT_SEEN} |" in summary
    assert (folder / "report.html").stat().st_size > 10_000
    assert "stockwire_" in (folder / "gateway-metrics.txt").read_text()
    assert elapsed < 60
