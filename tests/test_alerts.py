"""gateway/alerts.py: alert tiers from quantity, initial quantity and thresholds."""

from __future__ import annotations

import pytest

from gateway.alerts import SEVERITY, Level, Thresholds, level, status
from gateway.protocol import StockRecord

DEFAULT = Thresholds()


def rec(qty: int, initial: int | None = 100, safety: float | None = None) -> StockRecord:
    return StockRecord(sku="A", qty=qty, ver=1, ts=0, initial=initial, safety=safety)


def test_default_thresholds() -> None:
    assert Thresholds(safety=0.2, critical=0.05) == DEFAULT


@pytest.mark.parametrize(
    ("qty", "expected"),
    [
        (150, "ok"),  # restocked above plan
        (100, "ok"),
        (21, "ok"),
        (20, "ok"),  # 20% is on the safety line, not below it
        (19, "low"),
        (6, "low"),
        (5, "low"),  # 5% is on the critical line, not below it
        (4, "critical"),
        (1, "critical"),
        (0, "out"),
    ],
)
def test_default_levels_initial_100(qty: int, expected: Level) -> None:
    assert level(rec(qty), DEFAULT) == expected


@pytest.mark.parametrize(
    ("qty", "expected"), [(200, "ok"), (199, "low"), (50, "low"), (49, "critical"), (1, "critical")]
)
def test_default_levels_initial_1000(qty: int, expected: Level) -> None:
    assert level(rec(qty, initial=1000), DEFAULT) == expected


@pytest.mark.parametrize(
    ("initial", "qty", "expected"),
    [
        (35, 7, "ok"), (35, 6, "low"), (60, 3, "low"), (60, 2, "critical"),
        (6, 1, "low"), (5, 1, "ok"), (1, 1, "ok"),
    ],
)
def test_boundaries_with_awkward_initials(initial: int, qty: int, expected: Level) -> None:
    assert level(rec(qty, initial=initial), DEFAULT) == expected


@pytest.mark.parametrize("initial", [None, 0])
@pytest.mark.parametrize(("qty", "expected"), [(0, "out"), (1, "ok"), (10**9, "ok")])
def test_without_initial_only_ok_or_out(initial: int | None, qty: int, expected: Level) -> None:
    assert level(rec(qty, initial=initial), DEFAULT) == expected


@pytest.mark.parametrize(
    ("safety", "qty", "expected"),
    [
        (0.5, 50, "ok"),
        (0.5, 49, "low"),
        (0.5, 5, "low"),
        (0.5, 4, "critical"),
        (0.1, 10, "ok"),
        (0.1, 9, "low"),
        (0.1, 4, "critical"),
        (0.0, 1, "ok"),
        (0.0, 0, "out"),
    ],
)
def test_per_sku_safety_overrides_room_threshold(safety: float, qty: int, expected: Level) -> None:
    assert level(rec(qty, safety=safety), DEFAULT) == expected


def test_critical_never_above_per_sku_safety_line() -> None:
    # safety 3% is below the room's 5% critical line: critical moves down to 3%, no "low" band.
    levels = {qty: level(rec(qty, safety=0.03), DEFAULT) for qty in range(1, 101)}
    assert {qty for qty, lvl in levels.items() if lvl == "critical"} == {1, 2}
    assert {qty for qty, lvl in levels.items() if lvl == "ok"} == set(range(3, 101))
    assert "low" not in levels.values()


@pytest.mark.parametrize(
    ("thresholds", "qty", "expected"),
    [
        (Thresholds(safety=0.3, critical=0.1), 30, "ok"),
        (Thresholds(safety=0.3, critical=0.1), 29, "low"),
        (Thresholds(safety=0.3, critical=0.1), 10, "low"),
        (Thresholds(safety=0.3, critical=0.1), 9, "critical"),
        (Thresholds(safety=0.2, critical=0.0), 1, "low"),
        (Thresholds(safety=0.0, critical=0.0), 1, "ok"),
        (Thresholds(safety=0.2, critical=0.2), 19, "critical"),
        (Thresholds(safety=0.2, critical=0.2), 20, "ok"),
    ],
)
def test_custom_thresholds(thresholds: Thresholds, qty: int, expected: Level) -> None:
    assert level(rec(qty), thresholds) == expected


@pytest.mark.parametrize(
    ("lvl", "expected"), [("ok", "ok"), ("low", "low"), ("critical", "low"), ("out", "out")]
)
def test_status_hides_critical_from_viewers(lvl: Level, expected: str) -> None:
    assert status(lvl) == expected


def test_severity_order() -> None:
    assert sorted(SEVERITY, key=SEVERITY.__getitem__) == ["ok", "low", "critical", "out"]


@pytest.mark.parametrize(
    ("safety", "critical"),
    [(0.1, 0.2), (1.0, 0.05), (1.5, 0.05), (0.2, -0.01), (-0.1, -0.2), (float("nan"), 0.05),
     (0.2, float("nan"))],
)
def test_invalid_thresholds_raise(safety: float, critical: float) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        Thresholds(safety=safety, critical=critical)


@pytest.mark.parametrize(("safety", "critical"), [(0.0, 0.0), (0.99, 0.99), (0.5, 0.0)])
def test_edge_thresholds_are_valid(safety: float, critical: float) -> None:
    assert Thresholds(safety=safety, critical=critical).safety == safety
