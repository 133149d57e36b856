"""gateway/room.py: version ordering, merging, urgency, snapshots, and audience views."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.alerts import Thresholds
from gateway.protocol import StockRecord
from gateway.room import PAST_EPOCHS, Epoch, Held, Outcome, RoomState

TS = 1_700_000_000_000


def rec(
    sku: str = "A", qty: int = 50, ver: int = 1, *, initial: int | None = 100, **extra: Any
) -> StockRecord:
    return StockRecord(sku=sku, qty=qty, ver=ver, ts=TS + ver, initial=initial, **extra)


def state_with(*records: StockRecord) -> RoomState:
    """A room that has applied ``records`` and already sent them."""
    state = RoomState("live-1")
    for record in records:
        state.apply(record)
    state.take_pending()
    return state


# -- versions ------------------------------------------------------------------


def test_new_sku_is_urgent_and_stored() -> None:
    state = RoomState("live-1")
    record = rec(qty=50)
    assert state.apply(record) is Outcome.URGENT
    assert state.items == {"A": record}
    assert state.levels == {"A": "ok"}
    assert state.pending == {"A": record}
    assert state.seq == 0  # apply never advances the sequence


@pytest.mark.parametrize("stale_ver", [5, 4, 1])
def test_older_or_equal_version_is_stale_and_changes_nothing(stale_ver: int) -> None:
    state = RoomState("live-1")
    current = rec(qty=50, ver=5)
    state.apply(current)
    assert state.apply(rec(qty=0, ver=stale_ver)) is Outcome.STALE
    assert state.items == {"A": current}
    assert state.levels == {"A": "ok"}
    assert state.pending == {"A": current}


def test_stale_after_take_leaves_nothing_pending() -> None:
    state = state_with(rec(ver=5))
    assert state.seq == 1
    assert state.apply(rec(qty=1, ver=4)) is Outcome.STALE
    assert state.pending == {}
    assert state.take_pending() == []
    assert state.seq == 1


def test_newer_version_replaces() -> None:
    state = state_with(rec(qty=50, ver=5))
    newer = rec(qty=45, ver=6)
    assert state.apply(newer) is Outcome.MERGED
    assert state.items["A"] is newer


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_burst_leaves_one_pending_entry_with_the_last_record(order: str) -> None:
    burst = [rec(qty=1000 - v, ver=v, initial=2000) for v in range(1, 1001)]
    if order == "descending":
        burst.reverse()
    elif order == "shuffled":
        random.Random(20240601).shuffle(burst)
    state = RoomState("live-1")
    for record in burst:
        state.apply(record)
    last = rec(qty=0, ver=1000, initial=2000)
    assert state.pending == {"A": last}
    assert state.items == {"A": last}
    assert state.take_pending() == [last]
    assert state.seq == 1


def test_burst_to_several_skus_keeps_one_entry_each() -> None:
    state = RoomState("live-1")
    for ver in range(1, 101):
        for sku in ("A", "B", "C"):
            state.apply(rec(sku, qty=ver, ver=ver, initial=None))
    assert state.take_pending() == [rec(sku, qty=100, ver=100, initial=None) for sku in ("A", "B", "C")]


# -- urgency -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "outcome"),
    [
        pytest.param(50, 40, Outcome.MERGED, id="ok-to-ok"),
        pytest.param(50, 20, Outcome.MERGED, id="ok-to-ok-at-safety-line"),
        pytest.param(50, 19, Outcome.URGENT, id="ok-to-low"),
        pytest.param(19, 10, Outcome.MERGED, id="low-to-low"),
        pytest.param(10, 4, Outcome.URGENT, id="low-to-critical"),
        pytest.param(4, 2, Outcome.MERGED, id="critical-to-critical"),
        pytest.param(2, 0, Outcome.URGENT, id="critical-to-out"),
        pytest.param(50, 0, Outcome.URGENT, id="ok-to-out"),
        pytest.param(0, 30, Outcome.URGENT, id="back-in-stock"),
        pytest.param(0, 3, Outcome.URGENT, id="out-to-critical"),
        pytest.param(4, 10, Outcome.URGENT, id="critical-to-low"),
        pytest.param(19, 50, Outcome.URGENT, id="low-to-ok"),
        pytest.param(50, 50, Outcome.MERGED, id="same-qty-newer-version"),
    ],
)
def test_tier_changes_are_urgent_same_tier_merged(before: int, after: int, outcome: Outcome) -> None:
    state = state_with(rec(qty=before, ver=1))
    assert state.apply(rec(qty=after, ver=2)) is outcome
    assert state.pending == {"A": rec(qty=after, ver=2)}


def test_without_initial_only_out_and_back_are_urgent() -> None:
    state = state_with(rec(qty=100, ver=1, initial=None))
    assert state.apply(rec(qty=1, ver=2, initial=None)) is Outcome.MERGED
    assert state.apply(rec(qty=0, ver=3, initial=None)) is Outcome.URGENT
    assert state.apply(rec(qty=1, ver=4, initial=None)) is Outcome.URGENT


def test_tier_change_from_new_initial_is_urgent() -> None:
    state = state_with(rec(qty=10, ver=1, initial=100))  # low
    assert state.levels["A"] == "low"
    assert state.apply(rec(qty=10, ver=2, initial=20)) is Outcome.URGENT  # 50%: ok
    assert state.levels["A"] == "ok"


def test_room_thresholds_are_used() -> None:
    state = RoomState("live-1", Thresholds(safety=0.5, critical=0.1))
    state.apply(rec(qty=60, ver=1))
    assert state.apply(rec(qty=40, ver=2)) is Outcome.URGENT
    assert state.levels["A"] == "low"
    assert state.apply(rec(qty=9, ver=3)) is Outcome.URGENT
    assert state.levels["A"] == "critical"


def test_per_sku_safety_is_used() -> None:
    state = state_with(rec(qty=60, ver=1, safety=0.5))
    assert state.apply(rec(qty=49, ver=2, safety=0.5)) is Outcome.URGENT
    assert state.levels["A"] == "low"


def test_second_sku_is_urgent_even_when_first_exists() -> None:
    state = state_with(rec("A"))
    assert state.apply(rec("B")) is Outcome.URGENT


# -- take_pending --------------------------------------------------------------


def test_take_pending_returns_changes_once_and_advances_seq_only_with_changes() -> None:
    state = RoomState("live-1")
    assert state.take_pending() == []
    assert state.seq == 0
    a1, b1 = rec("A", ver=1), rec("B", ver=1)
    state.apply(a1)
    state.apply(b1)
    assert state.take_pending() == [a1, b1]
    assert state.seq == 1
    assert state.take_pending() == []
    assert state.seq == 1
    a2 = rec("A", qty=49, ver=2)
    state.apply(a2)
    assert state.take_pending() == [a2]
    assert state.seq == 2
    assert state.items == {"A": a2, "B": b1}


# -- replace -------------------------------------------------------------------


def test_replace_adopts_snapshot_with_lower_versions_and_drops_missing() -> None:
    state = RoomState("live-1")
    state.apply(rec("A", qty=50, ver=10))
    state.apply(rec("B", qty=5, ver=7))
    state.take_pending()
    state.apply(rec("A", qty=40, ver=11))  # pending, never sent
    seq = state.seq
    assert seq == 1

    a_new, c_new = rec("A", qty=0, ver=2), rec("C", qty=15, ver=1)
    state.replace([a_new, c_new], "reseeded")

    assert state.items == {"A": a_new, "C": c_new}
    assert state.levels == {"A": "out", "C": "low"}
    assert state.pending == {}
    assert state.seq == seq + 1
    assert state.take_pending() == []
    assert state.seq == seq + 1


def test_after_replace_versions_continue_from_the_snapshot() -> None:
    state = state_with(rec("A", ver=10))
    state.replace([rec("A", qty=30, ver=2)], "reseeded")
    assert state.apply(rec("A", qty=31, ver=2)) is Outcome.STALE
    assert state.apply(rec("A", qty=29, ver=3)) is Outcome.MERGED
    assert state.items["A"] == rec("A", qty=29, ver=3)


def test_replace_with_duplicates_keeps_highest_version() -> None:
    state = RoomState("live-1")
    state.replace([rec("A", qty=1, ver=3), rec("A", qty=2, ver=5), rec("A", qty=3, ver=4)], "e")
    assert state.items == {"A": rec("A", qty=2, ver=5)}


def test_replace_with_empty_snapshot_empties_the_room() -> None:
    state = state_with(rec("A"), rec("B"))
    state.replace([], "e")
    assert state.items == {}
    assert state.levels == {}
    assert state.snapshot_view("viewer") == []
    assert state.seq == 2


def test_replace_accepts_a_generator() -> None:
    state = RoomState("live-1")
    state.replace((rec(sku, ver=1) for sku in "XYZ"), "e")
    assert sorted(state.items) == ["X", "Y", "Z"]


# -- views ---------------------------------------------------------------------

FULL = StockRecord(
    sku="A", qty=4, ver=9, ts=TS, name="Tee", initial=100, platforms={"douyin": 3, "tb": 1}, reserve=7,
    safety=0.2,
)


def test_viewer_view_has_exactly_the_public_fields() -> None:
    state = RoomState("live-1")
    state.apply(FULL)
    [item] = state.view([FULL], "viewer")
    assert item == {"sku": "A", "qty": 4, "st": "low", "ver": 9, "ts": TS}  # critical shows as low
    assert set(item) == {"sku", "qty", "st", "ver", "ts"}


@pytest.mark.parametrize(("qty", "st"), [(50, "ok"), (19, "low"), (4, "low"), (0, "out")])
def test_viewer_status(qty: int, st: str) -> None:
    state = RoomState("live-1")
    state.apply(rec(qty=qty))
    assert state.snapshot_view("viewer") == [{"sku": "A", "qty": qty, "st": st, "ver": 1, "ts": TS + 1}]


def test_host_view_has_publisher_fields_plus_alert_and_status() -> None:
    state = RoomState("live-1")
    state.apply(FULL)
    assert state.view([FULL], "host") == [
        {
            "sku": "A", "qty": 4, "ver": 9, "ts": TS, "name": "Tee", "initial": 100,
            "platforms": {"douyin": 3, "tb": 1}, "reserve": 7, "safety": 0.2,
            "st": "low", "alert": "critical",
        }
    ]


def test_host_items_leave_the_epoch_to_the_snapshot() -> None:
    state = RoomState("live-1")
    record = rec(qty=3, ep="e1")
    state.apply(record)
    assert "ep" not in state.view([record], "host")[0]
    assert "ep" not in state.snapshot_view("host")[0]
    assert "ep" not in state.snapshot_view("viewer")[0]


def test_host_view_of_minimal_record() -> None:
    state = RoomState("live-1")
    record = rec(qty=0, initial=None)
    state.apply(record)
    assert state.snapshot_view("host") == [
        {"sku": "A", "qty": 0, "ver": 1, "ts": TS + 1, "st": "out", "alert": "out", "safety": 0.2}
    ]


def test_views_do_not_mutate_records() -> None:
    state = RoomState("live-1")
    state.apply(FULL)
    state.view([FULL], "host")
    assert FULL.to_wire() == {
        "sku": "A", "qty": 4, "ver": 9, "ts": TS, "name": "Tee", "initial": 100,
        "platforms": {"douyin": 3, "tb": 1}, "reserve": 7, "safety": 0.2,
    }


def test_view_of_taken_changes_matches_current_levels() -> None:
    state = state_with(rec("A", qty=50), rec("B", qty=50))
    state.apply(rec("B", qty=3, ver=2))
    changes = state.take_pending()
    assert state.view(changes, "viewer") == [{"sku": "B", "qty": 3, "st": "low", "ver": 2, "ts": TS + 2}]
    assert [item["alert"] for item in state.view(changes, "host")] == ["critical"]


def test_replace_within_the_same_epoch_keeps_the_newer_record() -> None:
    state = RoomState("room")
    state.replace([rec("A", qty=10, ver=3), rec("B", qty=5, ver=1)], "e1")
    state.apply(rec("A", qty=8, ver=5))
    state.replace([rec("A", qty=9, ver=4), rec("B", qty=4, ver=2)], "e1")
    assert {s: (r.qty, r.ver) for s, r in state.items.items()} == {"A": (8, 5), "B": (4, 2)}
    state.replace([rec("A", qty=100, ver=1)], "e2")  # a new epoch: versions started over
    assert {s: (r.qty, r.ver) for s, r in state.items.items()} == {"A": (100, 1)}


# -- epochs --------------------------------------------------------------------


def test_records_without_an_epoch_or_of_the_rooms_epoch_are_current() -> None:
    state = RoomState("room")
    assert state.judge(None) is Epoch.CURRENT
    assert state.judge("e1") is Epoch.UNKNOWN  # nothing loaded yet
    state.replace([], "")  # loaded before the room's first write
    assert state.judge("e1") is Epoch.UNKNOWN
    state.replace([], "e1")
    assert state.judge("e1") is Epoch.CURRENT
    assert state.judge(None) is Epoch.CURRENT


def test_a_new_epoch_makes_the_old_one_past() -> None:
    state = RoomState("room")
    state.replace([rec("A", ver=40)], "e1")
    assert state.judge("e2") is Epoch.UNKNOWN
    state.replace([rec("A", ver=1)], "e2")
    assert state.judge("e1") is Epoch.PAST
    assert state.judge("e2") is Epoch.CURRENT
    assert state.judge("e3") is Epoch.UNKNOWN
    assert "" not in state.past_epochs


def test_retire_ignores_the_current_epoch_and_remembers_a_bounded_few() -> None:
    state = RoomState("room")
    state.replace([], "now")
    state.retire("now")
    assert state.judge("now") is Epoch.CURRENT
    for i in range(PAST_EPOCHS + 3):
        state.retire(f"old-{i}")
    assert len(state.past_epochs) == PAST_EPOCHS
    assert state.judge(f"old-{PAST_EPOCHS + 2}") is Epoch.PAST
    assert state.judge("old-0") is Epoch.UNKNOWN  # forgotten: a reload would tell again


def test_an_epoch_read_again_is_current_not_past() -> None:
    state = RoomState("room")
    state.replace([], "e1")
    state.replace([], "e2")
    state.replace([], "e1")  # someone restored the old epoch key
    assert state.judge("e1") is Epoch.CURRENT
    assert state.judge("e2") is Epoch.PAST


def test_held_keeps_the_newest_record_per_sku() -> None:
    held = Held()
    assert held.add(rec("A", qty=9, ver=3, ep="e1"))
    assert not held.add(rec("A", qty=8, ver=3, ep="e1"))  # a duplicate
    assert not held.add(rec("A", qty=7, ver=2, ep="e1"))  # older
    assert held.add(rec("A", qty=6, ver=5))  # no epoch: the version rule
    assert held.add(rec("B", qty=1, ver=1, ep="e1"))
    assert {s: r.qty for s, r in held.records.items()} == {"A": 6, "B": 1}
    assert not held.mixed


def test_held_records_of_another_epoch_replace_by_arrival_and_mark_it() -> None:
    held = Held()
    held.add(rec("A", qty=9, ver=30, ep="e1"))
    assert held.add(rec("A", qty=100, ver=1, ep="e2"))  # Redis started over
    assert held.records["A"].qty == 100
    assert held.mixed


def test_adopt_applies_held_records_by_epoch() -> None:
    state = RoomState("room")
    state.replace([rec("A", qty=50, ver=10)], "e1")
    held = Held()
    for record in (rec("A", qty=1, ver=1, ep="e2"), rec("B", qty=5, ver=2, ep="e2"),
                   rec("C", qty=9, ver=7, ep="e1"), rec("D", qty=3, ver=4, ep="e9")):
        held.add(record)
    unexplained, discarded = state.adopt([rec("A", qty=1, ver=1), rec("B", qty=5, ver=1)], "e2",
                                         held, seen={"e2", "e8"})
    assert state.epoch == "e2"
    assert {s: (r.qty, r.ver) for s, r in state.items.items()} == {"A": (1, 1), "B": (5, 2)}
    assert discarded == 2  # A at the snapshot's version; C of the past epoch e1
    assert unexplained == {"e9"}  # published after the read, perhaps in a newer epoch
    assert state.judge("e8") is Epoch.PAST  # seen before the read, which showed another
    assert state.judge("e1") is Epoch.PAST
    assert state.pending == {}
