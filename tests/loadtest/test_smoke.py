"""A 30-second rehearsal: the whole Locust suite against a real gateway and Redis.

``tshirt-sellout`` compressed 16x (420 sale-seconds in about 26 s) with 300
units, 50 viewers and one host: it sells out, is restocked and sells on.  The
assertions are on Locust's own CSV and on counts the plan fixes exactly —
never on timings, so a busy machine makes the run slower, not red.  That is
why the scenario's own one-second restock limit is switched off here
(``--max-restock-seen-ms 0``); tests/loadtest/test_exit_code.py shows that a
broken limit fails the run.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from redis.crc import key_slot

from loadtest import report
from loadtest.run import main as run_main
from loadtest.summary import summarize
from tests.conftest import RedisClusterNodes, RedisServer

STOCK = 300
VIEWERS = 50


def read_stats(folder: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(folder / "locust_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def count(rows: dict[tuple[str, str], dict[str, str]], kind: str, name: str) -> int:
    row = rows.get((kind, name))
    return int(row["Request Count"]) if row else 0


def rehearse(tmp_path: Path, redis_args: list[str], speed: int, viewers: int,
             locust_args: tuple[str, ...] = ()) -> tuple[Path, float]:
    started = time.monotonic()
    code = run_main([
        "--scenario", "tshirt-sellout", *redis_args, "--results", str(tmp_path),
        "--", "--speed", str(speed), "--stock", str(STOCK), "--peak-viewers", str(viewers),
        "--loglevel", "WARNING", "--only-summary", "--max-restock-seen-ms", "0", *locust_args,
    ])
    elapsed = time.monotonic() - started
    (folder,) = tmp_path.iterdir()
    log = (folder / "gateway.log").read_text()
    assert code == 0, f"locust exited {code}; gateway log:\n{log[-2000:]}"
    return folder, elapsed


def check_sale(folder: Path, viewers: int, rooms: int = 1) -> None:
    rows = read_stats(folder)
    failures = {key: row["Failure Count"] for key, row in rows.items() if int(row["Failure Count"])}
    assert failures == {}
    with open(folder / "locust_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []

    # Every viewer connected, got its snapshot and then a stream of updates.
    assert count(rows, report.VIEWER, report.CONNECT) >= viewers
    assert count(rows, report.VIEWER, report.SNAPSHOT) >= viewers
    assert count(rows, report.VIEWER, report.UPDATE) > viewers * 10
    # The sale went exactly to plan in every room: 3,300 orders against 3,000 units, scaled to 300.
    assert count(rows, report.STOCK, report.OPEN) == rooms
    assert count(rows, report.STOCK, "order") == STOCK * rooms
    assert count(rows, report.STOCK, report.SOLD_OUT) == STOCK // 10 * rooms
    assert count(rows, report.STOCK, "restock") == rooms
    assert count(rows, report.STOCK, "order after restock") == STOCK // 4 * rooms
    # The sell-out and the restock reached the screens (one host per room).
    assert count(rows, report.VIEWER, report.SOLD_OUT_SEEN) >= rooms
    assert count(rows, report.VIEWER, report.RESTOCK_SEEN) >= rooms
    assert count(rows, report.HOST, report.SOLD_OUT_SEEN) == rooms
    assert count(rows, report.HOST, report.RESTOCK_SEEN) == rooms
    assert count(rows, report.HOST, report.alert_seen("out")) == rooms
    assert count(rows, report.HOST, report.STATS) > 0
    # And at the end every screen still open matched Redis (80% of the audience stays).
    assert count(rows, report.CHECK, f"{report.FINAL_STATE} (viewer)") == viewers * 8 // 10
    assert count(rows, report.CHECK, f"{report.FINAL_STATE} (host)") == rooms


def test_tshirt_sellout_rehearsal(own_redis: RedisServer, tmp_path: Path) -> None:
    folder, elapsed = rehearse(tmp_path, ["--redis-url", own_redis.url], speed=16, viewers=VIEWERS)
    check_sale(folder, VIEWERS)
    summary = summarize(folder)
    assert f"| ws-viewer | {report.SOLD_OUT_SEEN} |" in summary
    assert (folder / "report.html").stat().st_size > 10_000
    assert "stockwire_" in (folder / "gateway-metrics.txt").read_text()
    assert elapsed < 60


def run_id_over_every_shard(cluster: RedisClusterNodes, rooms: int) -> str:
    """A run id whose rooms hash to slots on every primary, so no single-node client could pass."""
    owners = {}
    for first, last, primary, *_ in cluster.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
        for slot in range(int(first), int(last) + 1):
            owners[slot] = int(primary[1])
    for n in range(10_000):
        run_id = f"c{n}"
        ports = {owners[key_slot(f"rehearsal-{run_id}-{i + 1}".encode())] for i in range(rooms)}
        if len(ports) == len(cluster.nodes):
            return run_id
    raise AssertionError("no run id spreads the rooms over every shard")


def test_rehearsal_against_a_redis_cluster(redis_cluster: RedisClusterNodes, tmp_path: Path) -> None:
    """Stock services, the final check and the local gateway all on cluster clients, rooms on every shard."""
    rooms, viewers = 3, 30
    run_id = run_id_over_every_shard(redis_cluster, rooms)
    args = ["--redis-url", redis_cluster.url, "--redis-cluster"]
    folder, _ = rehearse(tmp_path, args, speed=24, viewers=viewers,
                         locust_args=("--rooms", str(rooms), "--run-id", run_id))
    check_sale(folder, viewers, rooms)
    assert "--redis-cluster" in (folder / "command.txt").read_text()
    metrics = (folder / "gateway-metrics.txt").read_text()
    assert "stockwire_updates_received_total" in metrics
    # The rehearsal's stock was removed from the cluster afterwards (the viewer
    # counts expire by themselves).
    for node in redis_cluster.nodes:
        assert node.client().keys("stockwire:{rehearsal-*}:stock") == []
        assert node.client().keys("stockwire:{rehearsal-*}:epoch") == []
