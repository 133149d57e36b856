"""The scaling simulation end to end, scaled down: ``python -m loadtest.scaling --quick``.

It starts a real 3-primary Redis Cluster and two ``stockwire serve`` nodes, so
this is the one test that proves the multi-node topology of docs/scaling.md
carries traffic on every hop.  Assertions are about the hops existing and the
counts being consistent with each other — never about timings or rates: a
busy machine makes the figures worse, not the test red.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:  # a missing tool is a broken setup, not a reason to skip
            pytest.fail(f"{tool} is not installed: run scripts/ensure-redis.sh")
    folder = tmp_path_factory.mktemp("scaling")
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.scaling", "--quick", "--results", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = folder.glob("scaling-quick-*.json")
    return json.loads(path.read_text())


def test_publisher_to_redis(report: dict[str, Any]) -> None:
    m = report["measured"]
    assert m["publishes"] > 0
    assert m["skipped"] == 0
    # Every confirmed script call ran on the shard that owns the room, and published
    # there exactly once: Redis's own count against the publisher's confirmations.
    assert sum(s["evalsha_calls"] for s in m["per_shard"].values()) >= m["publishes"]
    for port, shard in m["per_shard"].items():
        assert shard["spublish_calls"] == shard["publishes"], port


def test_every_shard_carried_traffic_to_both_nodes(report: dict[str, Any]) -> None:
    m = report["measured"]
    assert len(m["per_shard"]) == 3
    for port, shard in m["per_shard"].items():
        assert shard["rooms"] > 0, port
        assert shard["publishes"] > 0, port
    # Both nodes hold viewers of every room, so each room has two subscribers on its shard.
    assert set(report["topology"]["shardnumsub"].values()) == {2}


def test_every_delivery_redis_owed_reached_a_node(report: dict[str, Any]) -> None:
    """Measured at the nodes, against publishes x subscribers: nothing lost, nothing twice."""
    m = report["measured"]
    owed = sum(s["owed_deliveries"] for s in m["per_shard"].values())
    received = sum(n["updates_received"] for n in m["per_node"].values())
    assert received == owed > 0
    for node in m["per_node"].values():  # each node watches every room
        assert node["updates_received"] == m["publishes"]


def test_both_nodes_sent_frames_and_every_room_updated(report: dict[str, Any]) -> None:
    m = report["measured"]
    assert set(m["per_node"]) == {"node0", "node1"}
    for name, node in m["per_node"].items():
        assert node["frames_sent"] > 0, name
        assert node["bytes_sent"] > node["frames_sent"], name  # a frame is more than one byte
        assert node["frames_encoded"] > 0, name
        assert node["cpu_s"] > 0, name
        assert node["client_closes"] == 0, name
        assert node["messages_dropped"] == 0, name
    assert m["client_frames_received"] > 0
    # What the nodes say they wrote is what the clients counted.
    assert m["client_frames_received"] == sum(n["frames_sent"] for n in m["per_node"].values())
    rooms = m["per_room"]
    assert len(rooms) == report["config"]["rooms"]
    for room, r in rooms.items():
        assert r["clients"] == report["config"]["clients_per_room"], room
        assert r["clients_with_updates"] == r["clients"], room
        assert r["min_frames"] > 0, room
        assert set(r["nodes"]) == {"node0", "node1"}, room


def test_model_is_reported_next_to_every_hop(report: dict[str, Any]) -> None:
    comparison = report["comparison"]
    for hop in ("publishes_per_s", "spublish_per_s", "redis_to_gateways_per_s", "frames_to_clients_per_s",
                "bytes_to_clients_per_s", "client_frames_per_s", "gateway_cpu_s"):
        assert comparison[hop]["model"] > 0, hop
        assert comparison[hop]["measured"] > 0, hop
    sizes = report["model"]["frame_bytes"]
    assert 0 < sizes["1_item"] < sizes["10_items"]
    assert report["measured"]["cpu_s"]["redis"] > 0
