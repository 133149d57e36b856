"""The run's verdict: failures and latency limits decide the exit code."""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass

from loadtest import report
from loadtest.options import thresholds_from
from loadtest.report import Thresholds, evaluate


@dataclass
class Entry:
    method: str
    name: str
    num_requests: int
    num_failures: int = 0
    p99: float = 10.0
    max_response_time: float = 20.0

    def get_response_time_percentile(self, percent: float) -> float:
        assert percent == 0.99
        return self.p99


def test_a_clean_run_passes() -> None:
    verdict = evaluate([Entry(report.VIEWER, report.UPDATE, 100)], Thresholds(max_p99_ms=50))
    assert not verdict.failed
    assert any("p99 10 ms (limit 50 ms)" in line for line in verdict.lines)


def test_any_failure_fails_by_default() -> None:
    entries = [Entry(report.VIEWER, report.UPDATE, 999), Entry(report.CHECK, report.FINAL_STATE, 1, 1)]
    assert evaluate(entries, Thresholds()).failed
    assert not evaluate(entries, Thresholds(max_fail_ratio=0.01)).failed


def test_latency_limits_apply_to_publish_to_screen_entries_only() -> None:
    slow_orders = Entry(report.STOCK, "order", 10, p99=900, max_response_time=900)
    slow_connects = Entry(report.VIEWER, report.CONNECT, 10, p99=900, max_response_time=900)
    assert not evaluate([slow_orders, slow_connects], Thresholds(max_p99_ms=100, max_seen_ms=100)).failed
    slow_updates = Entry(report.HOST, report.UPDATE, 10, p99=101)
    assert evaluate([slow_updates], Thresholds(max_p99_ms=100)).failed


def test_seen_limit_judges_the_worst_case() -> None:
    restock = Entry(report.VIEWER, report.RESTOCK_SEEN, 50, p99=80, max_response_time=1200)
    assert evaluate([restock], Thresholds(max_seen_ms=1000)).failed
    assert not evaluate([restock], Thresholds(max_seen_ms=1500)).failed
    assert not evaluate([restock], Thresholds()).failed  # 0: no limit


def test_a_run_without_events_fails() -> None:
    assert evaluate([], Thresholds()).failed


def test_the_restock_limit_judges_only_restock_seen() -> None:
    restock = Entry(report.HOST, report.RESTOCK_SEEN, 1, p99=1200, max_response_time=1200)
    sold_out = Entry(report.VIEWER, report.SOLD_OUT_SEEN, 50, p99=3000, max_response_time=3000)
    verdict = evaluate([restock, sold_out], Thresholds(max_restock_seen_ms=1000))
    assert verdict.failed
    assert [line for line in verdict.lines if line.startswith("FAILED")] == [
        "FAILED  ws-host restock seen: max 1200 ms (restock limit 1000 ms)"]
    assert not evaluate([restock, sold_out], Thresholds(max_restock_seen_ms=1500)).failed


def test_tshirt_sellout_carries_its_one_second_restock_promise() -> None:
    def options(scenario: str, **given: float | None) -> Namespace:
        return Namespace(scenario=scenario, max_p99_ms=0.0, max_fail_ratio=0.0, max_seen_ms=0.0, **given)

    assert thresholds_from(options("tshirt-sellout", max_restock_seen_ms=None)).max_restock_seen_ms == 1000
    assert thresholds_from(options("tshirt-sellout", max_restock_seen_ms=250)).max_restock_seen_ms == 250
    assert thresholds_from(options("tshirt-sellout", max_restock_seen_ms=0)).max_restock_seen_ms == 0
    for other in ("kol-surge", "batch-release", "multi-platform"):
        assert thresholds_from(options(other, max_restock_seen_ms=None)).max_restock_seen_ms == 0
