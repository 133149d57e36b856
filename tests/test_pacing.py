"""gateway/pacing.py: leading edge after quiet, one trailing deadline per burst, urgent now."""

from __future__ import annotations

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
