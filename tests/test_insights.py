"""Velocity, time to sell-out and next batch, with the clock passed in."""

from __future__ import annotations

from gateway.insights import SalesWindow, eta_seconds, next_batch, sku_stats
from gateway.protocol import StockRecord
from gateway.room import RoomState

T0 = 1_800_000_000_000


def test_velocity_is_units_per_minute_over_the_last_minute() -> None:
    w = SalesWindow()
    for second in range(120):
        w.add(T0 + second * 1000, 2)  # 2 units/s = 120/min
    assert w.per_minute(T0 + 120_000) == 120.0
    assert len(w.buckets) <= 61  # bounded: one bucket per second of the window


def test_velocity_decays_when_sales_stop() -> None:
    w = SalesWindow()
    for second in range(60):
        w.add(T0 + second * 1000, 1)
    assert w.per_minute(T0 + 60_000) == 60.0
    assert w.per_minute(T0 + 90_000) == 30.0  # only the buckets of the last 30 s remain
    assert w.per_minute(T0 + 200_000) == 0.0


def test_a_first_order_is_averaged_over_the_minimum_span() -> None:
    w = SalesWindow()
    w.add(T0, 5)
    assert w.per_minute(T0) == 30.0  # 5 units over 10 s, not over 0 s


def test_late_timestamps_count_in_the_current_bucket() -> None:
    w = SalesWindow()
    w.add(T0 + 5_000, 1)
    w.add(T0 + 1_000, 1)
    assert [b[1] for b in w.buckets] == [2]


def test_eta() -> None:
    assert eta_seconds(100, 60.0) == 100
    assert eta_seconds(0, 60.0) is None
    assert eta_seconds(100, 0.0) is None


def test_next_batch_is_the_first_upcoming_one() -> None:
    batches = [{"at": T0 - 1, "qty": 1}, {"at": T0 + 90, "qty": 3}, {"at": T0 + 30, "qty": 2}]
    record = StockRecord("a", 1, 1, T0, batches=batches)
    assert next_batch(record, T0) == {"at": T0 + 30, "qty": 2}
    assert next_batch(record, T0 + 100) is None
    assert "next_batch" not in sku_stats(record, None, T0 + 100)


def test_room_counts_only_decreases_as_sales() -> None:
    room = RoomState("r")
    room.apply(StockRecord("a", 100, 1, T0))
    room.apply(StockRecord("a", 90, 2, T0 + 1000))  # sold 10
    room.apply(StockRecord("a", 150, 3, T0 + 2000))  # restock: not a sale
    room.apply(StockRecord("a", 140, 4, T0 + 3000))  # sold 10
    room.apply(StockRecord("a", 10, 2, T0 + 4000))  # stale: ignored entirely
    assert sum(b[1] for b in room.sales["a"].buckets) == 20
    stats = room.stats(T0 + 10_000)
    assert stats == {"a": {"vel": 120.0, "eta": 70}}
