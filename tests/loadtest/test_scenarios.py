"""The scenarios' numbers: what docs/loadtest.md promises is what the plan computes."""

from __future__ import annotations

import math

import pytest

from gateway.protocol import valid_room
from loadtest.scenarios import (
    BATCH_RELEASE,
    KOL_SURGE,
    MULTI_PLATFORM,
    SCENARIOS,
    TSHIRT_SELLOUT,
    Action,
    Curve,
    OrderStream,
    Plan,
)


def plan(scenario=KOL_SURGE, **options) -> Plan:
    return Plan.build(scenario, run_id="test", **options)


def first_time(stream: OrderStream, stock: int, orders: float) -> float:
    """Sale time at which ``stream`` has had ``orders`` orders (bisection)."""
    lo, hi = stream.demand.start, stream.demand.end
    assert stream.due(hi, stock) >= orders
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if stream.due(mid, stock) < orders else (lo, mid)
    return hi


def test_curve_interpolates_and_integrates() -> None:
    curve = Curve(((10, 0.0), (20, 1.0), (40, 1.0)))
    assert curve.value(5) == 0.0
    assert curve.value(15) == pytest.approx(0.5)
    assert curve.value(30) == 1.0
    assert curve.value(41) == 0.0
    assert curve.area(10) == 0.0
    assert curve.area(20) == pytest.approx(5.0)
    assert curve.area(30) == pytest.approx(15.0)
    assert curve.area(1000) == curve.total_area == pytest.approx(25.0)


@pytest.mark.parametrize(("points", "problem"), [
    (((0, 1.0),), "two points"), (((5, 1.0), (1, 1.0)), "time order"), (((0, 1.0), (1, -1.0)), ">= 0"),
])
def test_curve_rejects_nonsense(points, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        Curve(points)


def test_action_needs_exactly_one_trigger() -> None:
    with pytest.raises(ValueError, match="either a time or a delay"):
        Action("x", "release", 0.1)
    with pytest.raises(ValueError, match="either a time or a delay"):
        Action("x", "release", 0.1, at=1.0, after_sellout=1.0)
    with pytest.raises(ValueError, match="unknown action op"):
        Action("x", "sell", 0.1, at=1.0)


def test_kol_surge_is_8000_orders_in_five_minutes_against_5000_units() -> None:
    (stream,) = KOL_SURGE.streams
    assert stream.demand.end - stream.demand.start == 300
    p = plan()
    assert p.total_orders(stream) == 8000
    sold_out = first_time(stream, 5000, 5000)
    assert 30 < sold_out < 330 - 10  # the reserve release (10 s later) happens during the sale
    assert p.opening(0) == (5000, {"name": KOL_SURGE.title, "initial": 5000, "reserve": 800})


def test_tshirt_sells_out_before_the_restock_and_not_after() -> None:
    sale, tail = TSHIRT_SELLOUT.streams
    (restock,) = TSHIRT_SELLOUT.actions
    p = plan(TSHIRT_SELLOUT)
    assert p.total_orders(sale) == 3300
    assert p.units(restock.units) == 2000
    assert first_time(sale, 3000, 3000) <= 330 < restock.at < tail.demand.start
    assert p.total_orders(tail) < p.units(restock.units)  # the restock does not sell out


def test_every_batch_sells_out_before_the_next() -> None:
    (stream,) = BATCH_RELEASE.streams
    p = plan(BATCH_RELEASE)
    batches = [a for a in BATCH_RELEASE.actions if a.op == "release"]
    assert sum(p.units(a.units) for a in batches) == 2000 == p.opening(0)[1]["reserve"]
    assert p.opening(0)[0] == 0
    ends = [a.at for a in batches[1:]] + [stream.demand.end]
    for batch, end in zip(batches, ends, strict=True):
        assert stream.due(end, 2000) - stream.due(batch.at, 2000) >= p.units(batch.units)


def test_batches_are_declared_at_their_release_times() -> None:
    p = plan(BATCH_RELEASE, speed=10)
    _, fields = p.opening(1_000_000)
    assert fields["batches"] == [{"at": 1_000_000 + 3000 + 6000 * i, "qty": 400} for i in range(5)]


def test_platforms_sell_out_in_order() -> None:
    p = plan(MULTI_PLATFORM)
    qty, fields = p.opening(0)
    assert fields["platforms"] == {"douyin": 3000, "kuaishou": 2000, "taobao": 1000}
    assert sum(fields["platforms"].values()) == qty == 6000
    times = {s.platform: first_time(s, 6000, fields["platforms"][s.platform]) for s in MULTI_PLATFORM.streams}
    assert times["taobao"] < times["douyin"] < times["kuaishou"] < 330
    assert [round(s.peak_rate(6000)) for s in MULTI_PLATFORM.streams] == [12, 7, 5]


def test_peak_order_rate_is_over_time_not_a_sum_of_peaks() -> None:
    # tshirt-sellout's two streams never overlap: 3,300 orders over 300 s, then 750 over 60 s.
    sale, tail = (s.peak_rate(3000) for s in TSHIRT_SELLOUT.streams)
    assert plan(TSHIRT_SELLOUT).peak_order_rate() == pytest.approx(max(sale, tail)) == pytest.approx(12.5)
    faster = plan(TSHIRT_SELLOUT, speed=5, rooms=2)
    assert faster.peak_order_rate() == pytest.approx(12.5 * 10)
    assert plan(MULTI_PLATFORM).peak_order_rate() == pytest.approx(24.0)  # three at once: 12 + 7 + 5


def test_platform_split_absorbs_rounding() -> None:
    qty, fields = plan(MULTI_PLATFORM, stock=1001).opening(0)
    assert sum(fields["platforms"].values()) == qty == 1001


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS)
def test_speed_compresses_time_not_orders(scenario) -> None:
    slow, fast = plan(scenario), plan(scenario, speed=5)
    assert fast.duration == pytest.approx(slow.duration / 5)
    for stream in scenario.streams:
        assert fast.total_orders(stream) == slow.total_orders(stream)
        assert fast.orders_due(stream, 60 / 5) == pytest.approx(slow.orders_due(stream, 60))
    assert fast.viewers_at(20 / 5) == slow.viewers_at(20)
    assert fast.viewer_spawn_rate() == pytest.approx(slow.viewer_spawn_rate() * 5)


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS)
def test_stock_scales_the_whole_sale(scenario) -> None:
    small = plan(scenario, stock=scenario.stock // 10)
    full = plan(scenario)
    for stream in scenario.streams:
        assert small.total_orders(stream) == pytest.approx(full.total_orders(stream) / 10, abs=1)
    for action in scenario.actions:
        assert small.units(action.units) == pytest.approx(full.units(action.units) / 10, abs=1)


def test_audience_peaks_at_the_peak() -> None:
    p = plan(peak_viewers=1000, speed=2)
    assert p.viewers_at(0) == 100
    assert p.viewers_at(30 / 2) == 1000
    assert max(p.viewers_at(t / 10) for t in range(0, int(p.duration * 10))) == 1000
    assert p.viewers_at(p.duration) == 600


def test_rooms_and_skus_are_valid_names() -> None:
    p = plan(rooms=3, skus=2, prefix="rehearsal")
    assert p.rooms == ("rehearsal-test-1", "rehearsal-test-2", "rehearsal-test-3")
    assert all(valid_room(r) for r in p.rooms)
    assert p.skus == ("serum-30ml-1", "serum-30ml-2")
    assert p.hosts == 3


@pytest.mark.parametrize("users", [1, 2, 3, 7])
def test_stock_users_share_orders_exactly(users) -> None:
    # Each user takes floor((due + index) / users); together they take floor(due).
    for due in (0.0, 0.5, 1.0, 7.9, 8000.0, 12345.3):
        taken = sum(math.floor((due + index) / users) for index in range(users))
        assert taken == math.floor(due)


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="speed must be > 0"):
        plan(speed=0)
    with pytest.raises(ValueError, match="at least one room"):
        plan(rooms=0)
    with pytest.raises(ValueError, match="stock users >= 1"):
        plan(stock_users=0)
