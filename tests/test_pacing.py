"""gateway/pacing.py: leading edge after quiet, one trailing deadline per burst, urgent now."""

from __future__ import annotations

import itertools
import math

import pytest

from gateway.pacing import Pacer


def flushed_at(interval: float, at: float) -> Pacer:
    pacer = Pacer(interval)
    pacer.flushed(at)
    return pacer


def test_fresh_pacer_flushes_first_change_now() -> None:
    pacer = Pacer(1.0)
    assert pacer.last_flush == -math.inf
    assert pacer.deadline is None
    assert pacer.on_change(10.0) == 10.0
    assert pacer.deadline is None


def test_first_change_after_quiet_spell_flushes_now() -> None:
    pacer = flushed_at(1.0, 10.0)
    assert pacer.on_change(15.0) == 15.0
    assert pacer.deadline is None


def test_change_exactly_one_interval_after_flush_is_now() -> None:
    pacer = flushed_at(1.0, 10.0)
    assert pacer.on_change(11.0) == 11.0


def test_changes_inside_interval_share_one_deadline() -> None:
    pacer = flushed_at(1.0, 10.0)
    assert pacer.on_change(10.25) == 11.0
    assert pacer.deadline == 11.0
    assert pacer.on_change(10.5) is None
    assert pacer.on_change(10.75) is None
    assert pacer.on_change(10.9375) is None
    assert pacer.deadline == 11.0


def test_deadline_counts_from_last_flush_not_from_the_change() -> None:
    pacer = flushed_at(0.5, 3.0)
    assert pacer.on_change(3.4375) == 3.5


def test_urgent_flushes_now_inside_interval() -> None:
    pacer = flushed_at(1.0, 10.0)
    assert pacer.on_change(10.25, urgent=True) == 10.25


def test_urgent_flushes_now_even_with_a_deadline_scheduled() -> None:
    pacer = flushed_at(1.0, 10.0)
    assert pacer.on_change(10.25) == 11.0
    assert pacer.on_change(10.5, urgent=True) == 10.5
    pacer.flushed(10.5)
    assert pacer.deadline is None
    assert pacer.on_change(10.75) == 11.5


def test_interval_zero_always_flushes_now() -> None:
    pacer = Pacer(0.0)
    for now in (1.0, 1.0, 1.5, 1.5, 2.0):
        assert pacer.on_change(now) == now
        pacer.flushed(now)
    assert pacer.on_change(2.0) == 2.0
    assert pacer.on_change(2.0) == 2.0  # without a flush in between, too
    assert pacer.deadline is None


def test_negative_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="interval"):
        Pacer(-0.1)


def test_cycle_restarts_after_flushed() -> None:
    pacer = flushed_at(1.0, 10.0)
    # burst: one deadline, then nothing until flushed
    assert pacer.on_change(10.5) == 11.0
    assert pacer.on_change(10.75) is None
    pacer.flushed(11.0)
    assert pacer.last_flush == 11.0
    assert pacer.deadline is None
    # the burst continues: the next change waits for the next interval
    assert pacer.on_change(11.25) == 12.0
    assert pacer.on_change(11.5) is None
    pacer.flushed(12.0)
    # quiet spell: leading edge again
    assert pacer.on_change(20.0) == 20.0
    pacer.flushed(20.0)
    assert pacer.on_change(20.5) == 21.0


def test_at_most_one_frame_per_interval_during_a_steady_burst() -> None:
    pacer = Pacer(0.25)
    flushes: list[float] = []
    pending_deadline: float | None = None
    for step in range(81):  # a change every 1/16 s for 5 s
        now = step / 16
        if pending_deadline is not None and now >= pending_deadline:
            flushes.append(pending_deadline)
            pacer.flushed(pending_deadline)
            pending_deadline = None
        due = pacer.on_change(now)
        if due is None:
            continue
        if due <= now:
            flushes.append(now)
            pacer.flushed(now)
        else:
            pending_deadline = due
    assert flushes == [i * 0.25 for i in range(21)]


# -- urgent changes are spaced by urgent_interval ------------------------------------


def test_urgent_right_after_a_flush_waits_for_the_urgent_gap() -> None:
    pacer = Pacer(1.0, urgent_interval=0.125)
    pacer.flushed(10.0)
    assert pacer.on_change(10.0625, urgent=True) == 10.125
    assert pacer.deadline == 10.125
    assert pacer.on_change(10.09375, urgent=True) is None  # the scheduled flush carries it
    assert pacer.on_change(10.1, urgent=False) is None


def test_urgent_after_the_gap_flushes_now() -> None:
    pacer = Pacer(1.0, urgent_interval=0.125)
    pacer.flushed(10.0)
    assert pacer.on_change(10.125, urgent=True) == 10.125
    assert pacer.on_change(10.5, urgent=True) == 10.5


def test_urgent_moves_a_scheduled_deadline_earlier() -> None:
    pacer = Pacer(1.0, urgent_interval=0.125)
    pacer.flushed(10.0)
    assert pacer.on_change(10.03125) == 11.0
    assert pacer.on_change(10.0625, urgent=True) == 10.125  # reschedule: earlier than 11.0
    assert pacer.deadline == 10.125
    assert pacer.on_change(10.078125) is None


def test_urgent_is_never_later_than_the_normal_deadline() -> None:
    pacer = Pacer(0.25, urgent_interval=1.0)
    pacer.flushed(10.0)
    assert pacer.on_change(10.125, urgent=True) == 10.25
    assert pacer.on_change(10.1875, urgent=True) is None


def test_quiet_spell_still_flushes_urgent_at_once() -> None:
    pacer = Pacer(0.1, urgent_interval=0.02)
    assert pacer.on_change(5.0, urgent=True) == 5.0  # first change ever
    pacer.flushed(5.0)
    assert pacer.on_change(7.0, urgent=True) == 7.0


def test_negative_urgent_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="urgent_interval"):
        Pacer(0.1, urgent_interval=-0.01)


def simulate(pacer: Pacer, changes: list[tuple[float, bool]]) -> list[float]:
    """Drive ``pacer`` the way the hub does (a timer per returned deadline); flush times."""
    flushes: list[float] = []
    timer: float | None = None
    for now, urgent in changes:
        if timer is not None and now >= timer:
            flushes.append(timer)
            pacer.flushed(timer)
            timer = None
        due = pacer.on_change(now, urgent=urgent)
        if due is None:
            continue
        if due <= now:
            flushes.append(now)
            pacer.flushed(now)
            timer = None
        else:
            timer = due
    if timer is not None:
        flushes.append(timer)
    return flushes


def test_a_flickering_sell_out_is_capped_at_one_frame_per_urgent_gap() -> None:
    # Stock flips 0 <-> 1 every 10 microseconds for 10 ms: 1,000 urgent changes.
    changes = [(1.0 + i / 100_000, True) for i in range(1000)]
    flushes = simulate(Pacer(0.1, urgent_interval=0.02), changes)
    assert flushes[0] == 1.0  # the sell-out itself goes out at once
    assert len(flushes) == 2  # and the last state 20 ms later, not 1,000 frames
    assert flushes[1] == 1.0 + 0.02
    assert all(b - a >= 0.02 - 1e-9 for a, b in itertools.pairwise(flushes))


def test_without_an_urgent_interval_every_urgent_change_is_a_frame() -> None:
    changes = [(1.0 + i / 100_000, True) for i in range(100)]
    assert len(simulate(Pacer(0.1), changes)) == 100


def test_a_stretch_multiplies_both_intervals() -> None:
    pacer = Pacer(0.1, 0.02)
    pacer.stretch = 4.0
    pacer.flushed(10.0)
    assert pacer.on_change(10.2) == pytest.approx(10.4)  # trailing edge at 4 x 0.1
    assert pacer.on_change(10.21, urgent=True) == pytest.approx(10.21)  # 4 x 0.02 passed
    pacer.flushed(10.21)
    assert pacer.on_change(10.25, urgent=True) == pytest.approx(10.29)
    assert pacer.on_change(10.62) == 10.62  # a whole stretched interval after: at once
