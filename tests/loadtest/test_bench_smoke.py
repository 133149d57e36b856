"""The benchmark harness end to end, scaled down: ``python -m loadtest.bench all --quick``.

Every scenario runs against its own redis-server and a real ``stockwire
serve`` (and the raw reference server where the scenario compares with it),
with 50-100 clients for a second or two each.  The assertions are about the
harness working and the gateway being correct under it — frames delivered,
every client on the final state, sampler clients holding exactly the
versions Redis confirmed — never about timings: a busy machine makes the
figures worse, not the test red.
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


def load(folder: Path, scenario: str) -> dict[str, Any]:
    (path,) = folder.glob(f"{scenario}-*.json")
    return json.loads(path.read_text())


def only_run(report: dict[str, Any], target: str = "gateway") -> dict[str, Any]:
    assert report["failures"] == []
    (run,) = report["runs"][target]
    return run


def assert_final(final: dict[str, Any]) -> None:
    assert final["all_reached"], final
    assert final["missing"] == 0
    assert final["reached"] == final["clients"] > 0
    assert final["samplers"] > 0
    assert final["samplers_exact_state"] == final["samplers"]  # merged, never lost
    assert final["ms"]["max"] >= 0


@pytest.mark.slow
def test_every_scenario_quick(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run scripts/ensure-redis.sh")
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "all", "--quick", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=55, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    fanout = load(tmp_path, "fanout")
    for target in ("gateway", "raw"):
        run = only_run(fanout, target)
        assert run["clients"] == 50
        assert run["join"]["joined"] == 50
        assert run["window"]["frames"] > 0
        assert run["window"]["frames_per_s"] > 0
        assert run["window"]["server_cpu"] > 0
        assert run["delivery"]["complete_clients"] == 50  # one frame per update, to everyone
        assert run["latency_ms"]["count"] > 0
        assert_final(run["final"])
        assert run["series"]
    assert 0 < fanout["ceiling_ratio"] < 10
    assert fanout["targets"][0]["value"] == fanout["ceiling_ratio"]
    assert fanout["plots"]
    assert all(Path(p).stat().st_size > 0 for p in fanout["plots"])

    latency = only_run(load(tmp_path, "latency"))
    assert [p["rate"] for p in latency["phases"]] == [1.0, 20.0]
    for phase in latency["phases"]:
        assert phase["latency_ms"]["count"] > 0
        assert 0 <= phase["latency_ms"]["p50"] <= phase["latency_ms"]["p99"] <= phase["latency_ms"]["max"]
    assert_final(latency["final"])

    surge = only_run(load(tmp_path, "surge"))
    assert surge["window"]["published"] > 0
    assert surge["window"]["frames"] > 0
    assert surge["window"]["items_per_frame"] >= 1
    assert surge["staleness_ms"]["count"] > 0
    assert surge["gateway_metrics"]["stockwire_updates_received_total"] >= surge["window"]["published"]
    assert surge["server"]["hwm_kb"] > 0
    assert_final(surge["final"])

    idle = load(tmp_path, "idle")
    for target in ("gateway", "raw"):
        run = only_run(idle, target)
        assert run["connections"] == 100
        assert run["rss_after_kb"] > 0
        assert run["kb_per_connection"] is not None

    join = load(tmp_path, "join")
    for target in ("gateway", "raw"):
        run = only_run(join, target)
        assert run["join"]["joined"] == 100
        assert run["join"]["per_s"] > 0
        assert run["snapshot_bytes"] > 0

    ingest = only_run(load(tmp_path, "ingest"))
    assert [m["via"] for m in ingest["modes"]] == ["script", "spublish"]
    for mode in ingest["modes"]:
        assert mode["published"] > 0
        assert mode["received_per_s"] > 0
        assert mode["received_total"] == mode["published"]  # every update reached the gateway
        assert_final(mode["final"])

    summary = json.loads(next(tmp_path.glob("all-*.json")).read_text())
    assert {row["target_no"] for row in summary["targets"]} == {1, 2, 3, 4, 5, 6}
