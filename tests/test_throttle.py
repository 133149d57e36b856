"""gateway/throttle.py: stretch when reading falls behind, restore when it catches up."""

from __future__ import annotations

import pytest

from gateway.throttle import Throttle


def run(throttle: Throttle, start: float, ticks: int, age: float | None) -> list[float | None]:
    """One record per tick (or none), ``age`` seconds old; what each tick returned."""
    out = []
    for i in range(ticks):
        if age is not None:
            throttle.observe(age)
        out.append(throttle.tick(start + i * throttle.tick_every))
    return out


def test_fresh_records_never_stretch() -> None:
    t = Throttle(0.1, 8.0)
    assert run(t, 0.0, 20, 0.003) == [None] * 20
    assert t.stretch == 1.0
    assert t.lag == 0.0


def test_a_constant_clock_skew_is_not_lag() -> None:
    t = Throttle(0.1, 8.0)
    # Redis's clock 2 s behind the gateway's: every record looks 2 s old.
    assert run(t, 0.0, 20, 2.0) == [None] * 20
    assert t.stretch == 1.0


def test_growing_lag_stretches_step_by_step_up_to_the_cap() -> None:
    t = Throttle(0.1, 8.0)
    run(t, 0.0, 4, 0.002)
    stretches = []
    for i in range(12):
        t.observe(0.002 + 0.15 * (i + 1))  # falling 150 ms further behind every tick
        stretches.append(t.tick(2.0 + i * 0.5))
    assert stretches[0] == 1.5
    assert stretches[1] == 2.25
    assert t.stretch == 8.0
    assert all(s is None for s in stretches[6:])  # at the cap: nothing more to give
    assert t.lag == pytest.approx(0.15 * 12)


def test_a_draining_backlog_holds_the_stretch() -> None:
    t = Throttle(0.1, 8.0)
    run(t, 0.0, 2, 0.001)
    t.observe(0.5)
    assert t.tick(1.0) == 1.5
    t.observe(0.8)
    assert t.tick(1.5) == 2.25
    # Still behind, but less so each tick: wait, neither up nor down.
    for i, age in enumerate((0.6, 0.4, 0.2)):
        t.observe(age)
        assert t.tick(2.0 + i * 0.5) is None
    assert t.stretch == 2.25


def test_calm_steps_down_one_step_per_calm_spell() -> None:
    t = Throttle(0.1, 8.0, calm=2.0)
    run(t, 0.0, 2, 0.001)
    t.observe(0.5)
    t.tick(1.0)
    t.observe(1.0)
    t.tick(1.5)
    assert t.stretch == 2.25
    out = run(t, 2.0, 12, 0.001)
    # Calm from 2.0: one step at 4.0, the next at 6.0 (ticks every 0.5 s).
    assert out[4] == 1.5
    assert out[8] == 1.0
    assert [s for s in out if s is not None] == [1.5, 1.0]
    assert t.stretch == 1.0


def test_a_quiet_room_is_calm() -> None:
    t = Throttle(0.1, 8.0, calm=1.0)
    run(t, 0.0, 2, 0.001)
    t.observe(0.5)
    assert t.tick(1.0) == 1.5
    assert run(t, 1.5, 4, None) == [None, None, 1.0, None]


def test_one_late_record_among_fresh_ones_is_noise() -> None:
    t = Throttle(0.1, 8.0)
    run(t, 0.0, 2, 0.001)
    t.observe(3.0)
    t.observe(0.002)
    assert t.tick(1.0) is None
    assert t.lag == pytest.approx(0.001)


def test_ticks_closer_than_the_tick_period_do_nothing() -> None:
    t = Throttle(0.1, 8.0)
    t.observe(0.001)
    t.tick(0.0)
    t.observe(5.0)
    assert t.tick(0.1) is None  # not due: the observation waits for the next tick
    assert t.tick(0.5) == 1.5


def test_the_baseline_forgets_after_the_window() -> None:
    t = Throttle(0.1, 8.0, window=10.0)
    t.observe(0.0)
    t.tick(0.0)
    # The clocks drift 1 s apart; after the window that is the new normal.
    assert run(t, 20.0, 3, 1.0) == [None, None, None]
    assert t.lag == 0.0


def test_max_stretch_one_turns_it_off() -> None:
    t = Throttle(0.1, 1.0)
    run(t, 0.0, 2, 0.001)
    t.observe(5.0)
    assert t.tick(1.0) is None
    assert t.stretch == 1.0
    with pytest.raises(ValueError, match="max_stretch"):
        Throttle(0.1, 0.5)


def test_short_intervals_still_need_50_ms_of_lag() -> None:
    t = Throttle(0.0, 8.0)
    run(t, 0.0, 2, 0.001)
    t.observe(0.04)
    assert t.tick(1.0) is None
    t.observe(0.2)
    assert t.tick(1.5) == 1.5
