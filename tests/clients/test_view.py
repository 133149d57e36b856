"""RoomView: the client's protocol rules as plain calls."""

from __future__ import annotations

import msgpack
import pytest

from clients.view import RoomView, Snapshot, Update
from gateway.protocol import encode_frame
from tests.clients.fakes import ROOM, item, snap, upd


def synced_view(*items: dict, seq: int = 10) -> RoomView:
    view = RoomView(ROOM)
    assert isinstance(view.apply(snap(seq, list(items)), now_ms=0), Snapshot)
    return view


def test_view_ignores_updates_before_the_first_snapshot() -> None:
    view = RoomView(ROOM)
    assert not view.synced
    assert view.apply(upd(1, [item("a", 1, 1)]), now_ms=0) is None
    assert view.items == {}
    assert view.stale_frames == 1
    assert not view.take_resync()


def test_snapshot_replaces_everything_even_with_lower_versions() -> None:
    view = synced_view(item("a", 5, 9), item("b", 3, 4), seq=40)
    event = view.apply(snap(2, [item("a", 50, 1)]), now_ms=0)
    assert isinstance(event, Snapshot)
    assert event.seq == 2
    assert view.items == {"a": item("a", 50, 1)}  # b is gone, a went back to ver 1
    assert view.seq == 2
    assert view.snapshots == 2
    # The new, lower sequence is the base from now on.
    assert view.apply(upd(3, [item("a", 49, 2)]), now_ms=0) is not None
    assert view.gaps == 0


def test_snapshot_mutates_items_in_place() -> None:
    view = synced_view(item("a", 5, 1))
    held = view.items
    view.apply(snap(11, [item("b", 1, 1)]), now_ms=0)
    assert held is view.items
    assert set(held) == {"b"}


def test_update_applies_only_newer_versions() -> None:
    view = synced_view(item("a", 10, 5), item("b", 10, 5))
    event = view.apply(upd(11, [item("a", 9, 6), item("b", 1, 5), item("c", 7, 1)]), now_ms=0)
    assert isinstance(event, Update)
    assert [i["sku"] for i in event.items] == ["a", "c"]
    assert event.stale == 1
    assert view.items["a"]["qty"] == 9
    assert view.items["b"]["qty"] == 10  # equal version ignored
    assert view.items["c"]["qty"] == 7
    event = view.apply(upd(12, [item("a", 100, 4)]), now_ms=0)  # older version ignored
    assert event is None
    assert view.items["a"]["qty"] == 9
    assert view.stale_items == 2
    assert view.seq == 12  # the frame itself was in order


def test_update_item_replaces_the_whole_record_but_keeps_the_name() -> None:
    # Viewer updates never carry the name the snapshot gave: it must survive them,
    # while every other field of the item is the update's own.
    view = synced_view(item("a", 10, 1, name="Mug", reserve=2), item("b", 4, 1))
    event = view.apply(upd(11, [item("a", 9, 2), item("b", 3, 2)]), now_ms=0)
    assert view.items["a"] == item("a", 9, 2, name="Mug")
    assert view.items["b"] == item("b", 3, 2)  # never named: nothing invented
    assert isinstance(event, Update)
    assert event.items[0] == item("a", 9, 2, name="Mug")
    view.apply(upd(12, [item("a", 8, 3, name="Big mug")]), now_ms=0)  # a host item's name wins
    view.apply(upd(13, [item("a", 7, 4)]), now_ms=0)
    assert view.items["a"] == item("a", 7, 4, name="Big mug")


def test_a_snapshot_of_another_epoch_takes_names_as_they_are() -> None:
    view = RoomView(ROOM)
    view.apply({**snap(1, [item("a", 10, 5, name="Mug")]), "epoch": "e1"}, now_ms=0)
    view.apply({**snap(2, [item("a", 10, 1)]), "epoch": "e2"}, now_ms=0)
    assert view.items["a"] == item("a", 10, 1)


@pytest.mark.parametrize("seq", [10, 9, 1])
def test_duplicate_and_old_sequences_are_ignored(seq: int) -> None:
    view = synced_view(item("a", 10, 1), seq=10)
    assert view.apply(upd(seq, [item("a", 1, 9)]), now_ms=0) is None
    assert view.items["a"]["qty"] == 10
    assert view.stale_frames == 1
    assert view.seq == 10
    assert view.gaps == 0


def test_gap_asks_for_one_resync_and_still_applies_items() -> None:
    view = synced_view(item("a", 10, 1), seq=10)
    event = view.apply(upd(13, [item("a", 8, 2)]), now_ms=0)
    assert isinstance(event, Update)
    assert event.gap
    assert view.items["a"]["qty"] == 8
    assert view.gaps == 1
    assert view.take_resync()
    assert not view.take_resync()  # asked once
    # A second gap while the resync is outstanding does not ask again ...
    event = view.apply(upd(20, [item("a", 8, 2)]), now_ms=0)
    assert isinstance(event, Update)
    assert event.gap
    assert event.items == []
    assert view.gaps == 2
    assert not view.take_resync()
    # ... but after the snapshot a new gap does.
    view.apply(snap(21, [item("a", 7, 3)]), now_ms=0)
    view.apply(upd(23, []), now_ms=0)
    assert view.take_resync()


def test_update_without_gap_and_without_changes_is_no_event() -> None:
    view = synced_view(item("a", 10, 3))
    assert view.apply(upd(11, [item("a", 10, 3)]), now_ms=0) is None
    assert view.seq == 11


def test_latencies_are_receive_time_minus_publish_time() -> None:
    view = synced_view(item("a", 10, 1))
    event = view.apply(upd(11, [item("a", 9, 2, ts=1_000), item("b", 1, 1, ts=1_250)]),
                       now_ms=1_300)
    assert isinstance(event, Update)
    assert event.received_ms == 1_300
    assert event.latencies_ms == {"a": 300, "b": 50}


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "hello", "room": ROOM, "seq": 11, "ts": 1, "items": []},
        {"t": "update", "room": ROOM, "seq": "11", "ts": 1, "items": []},
        {"t": "update", "room": ROOM, "seq": 11, "ts": 1, "items": {}},
        {"t": "update", "room": "other", "seq": 11, "ts": 1, "items": [item("a", 1, 9)]},
        {"seq": 11},
        ["not", "a", "map"],
        None,
    ],
)
def test_unknown_or_malformed_frames_are_ignored(frame: object) -> None:
    view = synced_view(item("a", 10, 1))
    assert view.apply(frame, now_ms=0) is None
    assert view.items == {"a": item("a", 10, 1)}
    assert view.seq == 10
    assert view.ignored_frames == 1


def test_pong_is_ignored_quietly() -> None:
    view = synced_view()
    assert view.apply({"t": "pong", "id": 7}, now_ms=0) is None
    assert view.ignored_frames == 0


def test_unknown_keys_are_kept() -> None:
    extra = {"badge": "hot", "future": {"x": [1, 2]}}
    view = synced_view(item("a", 10, 1, **extra))
    assert view.items["a"]["badge"] == "hot"
    view.apply({**upd(11, [item("a", 9, 2, **extra)]), "shard": 3}, now_ms=0)
    assert view.items["a"]["future"] == {"x": [1, 2]}


def test_host_items_and_status_accessors() -> None:
    host = item("a", 1, 1, st="low", name="Mug", initial=100, platforms={"tiktok": 1},
                reserve=0, safety=0.2, alert="critical")
    view = synced_view(host, item("b", 0, 1, st="out"))
    assert view.items["a"]["platforms"] == {"tiktok": 1}
    assert view.status("a") == "low"
    assert view.alert("a") == "critical"
    assert view.alert("b") == "out"  # viewer items fall back to st
    assert view.status("nope") is None


def test_malformed_items_are_skipped() -> None:
    view = synced_view(item("a", 1, 1), {"sku": "b", "qty": 1}, {"ver": 1}, "junk",
                       {"sku": "c", "ver": True})
    assert set(view.items) == {"a"}
    assert view.malformed_items == 4


def test_duplicate_skus_in_a_snapshot_keep_the_newest() -> None:
    view = synced_view(item("a", 1, 2), item("a", 5, 1))
    assert view.items["a"]["qty"] == 1


def test_gateway_encoded_frames_apply() -> None:
    view = RoomView(ROOM)
    frame = msgpack.unpackb(encode_frame("snapshot", ROOM, 3, 99, [item("a", 1, 1)]))
    assert isinstance(view.apply(frame, now_ms=0), Snapshot)
    assert view.seq == 3


def test_expect_snapshot_drops_the_sequence_base() -> None:
    view = synced_view(item("a", 1, 1))
    view.expect_snapshot()
    assert view.apply(upd(11, [item("a", 0, 2)]), now_ms=0) is None
    assert view.items["a"]["qty"] == 1  # state is kept until the snapshot replaces it


def test_snapshot_in_the_same_epoch_never_goes_back() -> None:
    view = RoomView(ROOM)
    view.apply({**snap(1, [item("a", 10, 5), item("b", 3, 1)]), "epoch": "e1"})
    view.apply({**snap(7, [item("a", 12, 4), item("b", 2, 2)]), "epoch": "e1"})  # a lagging node
    assert {k: (v["qty"], v["ver"]) for k, v in view.items.items()} == {"a": (10, 5), "b": (2, 2)}
    view.apply({**snap(8, [item("a", 99, 1)]), "epoch": "e2"})  # Redis was wiped and re-seeded
    assert {k: (v["qty"], v["ver"]) for k, v in view.items.items()} == {"a": (99, 1)}


def test_stats_frames_are_kept_apart_from_state() -> None:
    view = synced_view(item("a", 1, 1))
    stats = {"t": "stats", "room": ROOM, "ts": 5, "viewers": 3, "skus": {"a": {"vel": 1.0}}}
    assert view.apply(stats) is None
    assert view.stats == stats
    assert view.ignored_frames == 0
