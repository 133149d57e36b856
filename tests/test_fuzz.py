"""Property tests: the decoders never raise anything but BadMessage, and rooms only move forward."""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.protocol import (
    EPOCH_PATTERN,
    MAX_CLIENT_FRAME,
    MAX_INT,
    MAX_NAME_CHARS,
    MAX_PLATFORMS,
    PLATFORM_PATTERN,
    SKU_PATTERN,
    BadMessage,
    ClientMessage,
    StockRecord,
    decode_client_frame,
    decode_record,
)
from gateway.room import Held, RoomState

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # same examples every run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RECORD_REASONS = {"oversized", "undecodable", "not_a_map", "bad_field", "missing_field"}
CLIENT_REASONS = {"text_frame", "oversized", "undecodable", "unknown_type", "bad_field"}

# -- strategies ----------------------------------------------------------------------

# Everything msgpack can carry (ints limited to what it can encode).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
map_keys = st.text(max_size=12) | st.sampled_from(["sku", "qty", "ver", "ts", "t", "id", "platforms"])
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(map_keys, children, max_size=5),
    max_leaves=20,
)
# Keys that break strict_map_key (ints, bytes) must be rejected as undecodable, not crash.
loose_maps = st.dictionaries(st.integers(-3, 3) | st.binary(max_size=3) | map_keys, values, max_size=5)

near_counts = (
    st.integers(-2, 3)
    | st.integers(MAX_INT - 2, MAX_INT + 2)
    | st.sampled_from([True, False, 1.0, 0.5, "1", None])
    | values
)
skus = st.text(max_size=70) | st.sampled_from(["A", "x" * 64, "x" * 65, "a{b", "a}", "\n"]) | values
names = st.text(max_size=MAX_NAME_CHARS + 5) | values
platform_maps = (
    st.dictionaries(st.text(max_size=34) | st.from_regex(PLATFORM_PATTERN, fullmatch=True), near_counts,
                    max_size=MAX_PLATFORMS + 2)
    | st.just([])
    | values
)
safeties = st.floats(-0.5, 1.5) | st.sampled_from([0, 1, 0.0, 1.0, True, float("nan")]) | values
valid_epochs = st.from_regex(EPOCH_PATTERN, fullmatch=True)
epochs = st.text(max_size=70) | valid_epochs | values

OPTIONAL = {
    "name": names,
    "initial": near_counts,
    "platforms": platform_maps,
    "reserve": near_counts,
    "safety": safeties,
    "ep": epochs,
}
record_like = st.fixed_dictionaries(
    {"sku": skus, "qty": near_counts, "ver": near_counts, "ts": near_counts}, optional=OPTIONAL
) | st.fixed_dictionaries({}, optional={"sku": skus, "qty": near_counts, "ver": near_counts,
                                        "ts": near_counts, **OPTIONAL})

# Records that mostly pass, so the "accepted" branch is exercised too.
valid_skus = st.from_regex(r"[A-Za-z0-9_:/-]{1,64}", fullmatch=True)
counts = st.integers(0, MAX_INT)
valid_records = st.fixed_dictionaries(
    {"sku": valid_skus, "qty": counts, "ver": st.integers(1, MAX_INT), "ts": counts},
    optional={
        "name": st.text(max_size=MAX_NAME_CHARS),
        "initial": counts,
        "platforms": st.dictionaries(st.from_regex(PLATFORM_PATTERN, fullmatch=True), counts,
                                     max_size=MAX_PLATFORMS) | st.just([]),
        "reserve": counts,
        "safety": st.floats(0.0, 1.0, exclude_max=True),
        "ep": valid_epochs,
    },
)

CLIENT_TYPES = ["resync", "ping", "auth", "pong", "RESYNC"]
client_like = st.fixed_dictionaries(
    {"t": st.sampled_from(CLIENT_TYPES) | values},
    optional={"id": near_counts, "token": st.text(max_size=40) | values, "x": values},
)
hashable_t_client_like = st.fixed_dictionaries(
    {"t": st.sampled_from(CLIENT_TYPES) | scalars},
    optional={"id": near_counts, "token": st.text(max_size=40) | scalars, "x": values},
)

# -- contract checks -----------------------------------------------------------------


def is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT


def check_record(record: StockRecord) -> None:
    assert type(record.sku) is str
    assert re.fullmatch(SKU_PATTERN, record.sku)
    assert is_count(record.qty)
    assert is_count(record.ts)
    assert is_count(record.ver)
    assert record.ver >= 1
    assert record.name is None or (type(record.name) is str and len(record.name) <= MAX_NAME_CHARS)
    assert record.initial is None or is_count(record.initial)
    assert record.reserve is None or is_count(record.reserve)
    if record.platforms is not None:
        assert type(record.platforms) is dict
        assert len(record.platforms) <= MAX_PLATFORMS
        for name, qty in record.platforms.items():
            assert type(name) is str
            assert re.fullmatch(PLATFORM_PATTERN, name)
            assert is_count(qty)
    if record.safety is not None:
        assert type(record.safety) is float
        assert 0.0 <= record.safety < 1.0
    assert record.ep is None or re.fullmatch(EPOCH_PATTERN, record.ep)


def check_against_source(record: StockRecord, raw: dict[str, Any]) -> None:
    """An accepted record carries exactly what the publisher sent."""
    assert (record.sku, record.qty, record.ver, record.ts) == (raw["sku"], raw["qty"], raw["ver"], raw["ts"])
    assert record.name == raw.get("name")
    assert record.initial == raw.get("initial")
    assert record.reserve == raw.get("reserve")
    platforms = raw.get("platforms")
    assert record.platforms == ({} if platforms == [] else platforms)
    safety = raw.get("safety")
    assert record.safety == (None if safety is None else float(safety))
    assert record.ep == raw.get("ep")


def decode_or_reason(payload: bytes) -> StockRecord | None:
    reason = ""
    try:
        record = decode_record(payload)
    except BadMessage as exc:
        reason = exc.reason
    if reason:
        assert reason in RECORD_REASONS
        return None
    check_record(record)
    return record


def decode_client_or_reason(data: bytes) -> ClientMessage | None:
    reason = ""
    try:
        message = decode_client_frame(data)
    except BadMessage as exc:
        reason = exc.reason
    if reason:
        assert reason in CLIENT_REASONS
        return None
    assert message.kind in ("resync", "ping", "auth")
    assert message.id is None or is_count(message.id)
    # A renewal always carries its token; nothing else does.
    assert (message.token is not None) == (message.kind == "auth")
    assert message.token is None or type(message.token) is str
    return message


def expected_message(value: dict[str, Any]) -> ClientMessage:
    token = value.get("token") if value["t"] == "auth" else None
    return ClientMessage(value["t"], value.get("id"), token)


# -- decode_record ---------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300))
@example(b"\x84\xa3sku\xa1A\xa3qty\x01\xa3ver\x01\xa2ts\x00")
def test_decode_record_on_arbitrary_bytes(payload: bytes) -> None:
    decode_or_reason(payload)


@FUZZ
@given(values | loose_maps)
def test_decode_record_on_arbitrary_structures(value: Any) -> None:
    decode_or_reason(msgpack.packb(value))


@FUZZ
@given(record_like)
@example({"sku": "A", "qty": 1, "ver": 1, "ts": 1, "platforms": []})
@example({"sku": "A", "qty": 1, "ver": 1, "ts": 1, "safety": math.nan})
def test_decode_record_on_record_like_maps(raw: dict[str, Any]) -> None:
    record = decode_or_reason(msgpack.packb(raw))
    if record is not None:
        check_against_source(record, raw)


@FUZZ
@given(valid_records)
def test_decode_record_accepts_valid_records(raw: dict[str, Any]) -> None:
    record = decode_or_reason(msgpack.packb(raw))
    assert record is not None
    check_against_source(record, raw)


# -- decode_client_frame ------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=MAX_CLIENT_FRAME + 10))
def test_decode_client_frame_on_arbitrary_bytes(data: bytes) -> None:
    decode_client_or_reason(data)


@FUZZ
@given(st.text(max_size=20))
def test_decode_client_frame_rejects_all_text(text: str) -> None:
    with pytest.raises(BadMessage) as info:
        decode_client_frame(text)
    assert info.value.reason == "text_frame"


@FUZZ
@given(values | loose_maps | hashable_t_client_like)
def test_decode_client_frame_on_structures_with_hashable_type(value: Any) -> None:
    message = decode_client_or_reason(msgpack.packb(value))
    if message is not None:
        assert message == expected_message(value)


@FUZZ
@given(client_like)
@example({"t": []})
@example({"t": "auth", "token": "abc"})
@example({"t": "auth"})
@example({"t": "auth", "token": 5})
def test_decode_client_frame_on_client_like_maps(value: dict[str, Any]) -> None:
    message = decode_client_or_reason(msgpack.packb(value))
    if message is not None:
        assert message == expected_message(value)


# -- RoomState ----------------------------------------------------------------------------

updates = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C"]),
        st.integers(1, 25),  # version
        st.integers(0, 120),  # quantity
        st.booleans(),  # take pending after this update?
    ),
    max_size=60,
)


@FUZZ
@given(updates)
def test_room_keeps_max_version_and_never_sends_backwards(steps: list[tuple[str, int, int, bool]]) -> None:
    state = RoomState("fuzz")
    first_with_max: dict[str, StockRecord] = {}
    last_taken: dict[str, StockRecord] = {}
    frames = 0
    for sku, ver, qty, take in steps:
        record = StockRecord(sku=sku, qty=qty, ver=ver, ts=ver, initial=100)
        state.apply(record)
        best = first_with_max.get(sku)
        if best is None or ver > best.ver:
            first_with_max[sku] = record
        if take:
            changes = state.take_pending()
            frames += bool(changes)
            assert len({r.sku for r in changes}) == len(changes)  # one entry per SKU
            for change in changes:
                previous = last_taken.get(change.sku)
                assert previous is None or change.ver > previous.ver
                assert state.items[change.sku] is change
                last_taken[change.sku] = change
        assert state.seq == frames
    # equal versions: the first one applied wins, later equals are stale
    assert state.items == first_with_max
    assert set(state.levels) == set(first_with_max)
    # merging may skip intermediate values but never the last one
    for change in state.take_pending():
        previous = last_taken.get(change.sku)
        assert previous is None or change.ver > previous.ver
        last_taken[change.sku] = change
    assert last_taken == first_with_max


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(1, 25), st.integers(0, 120)),
                max_size=60),
       st.lists(st.tuples(st.sampled_from(["A", "B", "D"]), st.integers(1, 25)), max_size=4))
def test_holding_the_newest_record_per_sku_is_exact(
    steps: list[tuple[str, int, int]], snapshot: list[tuple[str, int]]
) -> None:
    """What a load holds (one record per SKU) ends where applying every record would."""
    stored = [StockRecord(sku=sku, qty=1, ver=ver, ts=0, ep="e1") for sku, ver in snapshot]
    arrivals = [StockRecord(sku=sku, qty=qty, ver=ver, ts=ver, ep="e1") for sku, ver, qty in steps]
    everything = RoomState("all")
    everything.replace(stored, "e1")
    for record in arrivals:
        everything.apply(record)
    held = Held()
    for record in arrivals:
        held.add(record)
    assert len(held.records) <= 3
    assert not held.mixed
    state = RoomState("held")
    unexplained, _ = state.adopt(stored, "e1", held)
    assert unexplained == set()
    assert state.items == everything.items
    assert state.pending == {}
