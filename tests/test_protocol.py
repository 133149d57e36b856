"""gateway/protocol.py: publisher records, key layout, and frames, as plain function calls."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from websockets.frames import Frame, Opcode

from gateway.protocol import (
    MAX_CLIENT_FRAME,
    MAX_INT,
    MAX_NAME_CHARS,
    MAX_PLATFORMS,
    MAX_RECORD_BYTES,
    BadMessage,
    ClientMessage,
    StockRecord,
    channel,
    decode_client_frame,
    decode_record,
    encode_record,
    room_of_channel,
    stock_key,
    valid_room,
    ws_binary_frame,
)

TS = 1_700_000_000_000


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)


def raw_record(**overrides: Any) -> dict[str, Any]:
    """A valid minimal publisher record as a plain map; ``overrides`` replace or add fields."""
    raw: dict[str, Any] = {"sku": "SKU-1", "qty": 10, "ver": 1, "ts": TS}
    raw.update(overrides)
    return raw


def without(field: str) -> dict[str, Any]:
    raw = raw_record()
    del raw[field]
    return raw


def padded_to(raw: dict[str, Any], size: int) -> bytes:
    """``raw`` plus an ignored ``pad`` field, packed to exactly ``size`` bytes."""
    for pad_len in range(size, -1, -1):
        payload = pack({**raw, "pad": "x" * pad_len})
        if len(payload) == size:
            return payload
    raise AssertionError(f"cannot pad to {size} bytes")


def record_reason(payload: bytes, **kwargs: Any) -> str:
    with pytest.raises(BadMessage) as info:
        decode_record(payload, **kwargs)
    return info.value.reason


def client_reason(data: bytes | str) -> str:
    with pytest.raises(BadMessage) as info:
        decode_client_frame(data)
    return info.value.reason


# -- decode_record: accepted ---------------------------------------------------


def test_minimal_record_decodes_with_optionals_absent() -> None:
    assert decode_record(pack(raw_record())) == StockRecord(sku="SKU-1", qty=10, ver=1, ts=TS)


def test_record_with_all_optional_fields() -> None:
    raw = raw_record(
        name="Red lipstick #3",
        initial=500,
        platforms={"douyin": 6, "kuaishou": 4},
        reserve=20,
        safety=0.25,
    )
    assert decode_record(pack(raw)) == StockRecord(
        sku="SKU-1",
        qty=10,
        ver=1,
        ts=TS,
        name="Red lipstick #3",
        initial=500,
        platforms={"douyin": 6, "kuaishou": 4},
        reserve=20,
        safety=0.25,
    )


def test_empty_platforms_array_from_lua_decodes_to_empty_map() -> None:
    # Redis's Lua cmsgpack encodes an empty table as an array: 0x90.
    payload = pack(raw_record(platforms=[]))
    assert b"\xa9platforms\x90" in payload
    assert decode_record(payload).platforms == {}


def test_empty_platforms_map_decodes_to_empty_map() -> None:
    assert decode_record(pack(raw_record(platforms={}))).platforms == {}


def test_nil_optional_fields_are_absent() -> None:
    raw = raw_record(name=None, initial=None, platforms=None, reserve=None, safety=None, ep=None)
    assert decode_record(pack(raw)) == StockRecord(sku="SKU-1", qty=10, ver=1, ts=TS)


def test_integer_safety_becomes_float() -> None:
    safety = decode_record(pack(raw_record(safety=0))).safety
    assert safety == 0.0
    assert type(safety) is float


def test_unknown_fields_are_ignored() -> None:
    assert decode_record(pack(raw_record(colour="red"))) == StockRecord("SKU-1", 10, 1, TS)


@pytest.mark.parametrize("ep", ["1733220000123456", "a", "!" * 64, "e-2024/12:x~"])
def test_epoch_is_kept(ep: str) -> None:
    record = decode_record(pack(raw_record(ep=ep)))
    assert record.ep == ep
    assert decode_record(encode_record(record)) == record
    assert record.to_wire()["ep"] == ep


@pytest.mark.parametrize(
    "ep", ["", "x" * 65, "has space", "é", "tab\t", 17, b"raw", ["e"]], ids=repr
)
def test_bad_epoch_is_bad_field(ep: object) -> None:
    with pytest.raises(BadMessage) as info:
        decode_record(pack(raw_record(ep=ep)))
    assert info.value.reason == "bad_field"
    assert "ep" in info.value.detail


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"qty": 0}, id="qty-zero"),
        pytest.param({"qty": MAX_INT, "ver": MAX_INT, "ts": MAX_INT}, id="max-int"),
        pytest.param({"ts": 0}, id="ts-zero"),
        pytest.param({"sku": "x" * 64}, id="sku-64-chars"),
        pytest.param({"sku": "商品-1:红色/L"}, id="sku-unicode-and-colon"),
        pytest.param({"name": "n" * MAX_NAME_CHARS}, id="name-max"),
        pytest.param({"name": ""}, id="name-empty"),
        pytest.param({"initial": 0, "reserve": 0}, id="initial-reserve-zero"),
        pytest.param({"platforms": {f"p{i}": i for i in range(MAX_PLATFORMS)}}, id="max-platforms"),
        pytest.param({"platforms": {"a" * 32: 1, "x_y-9": MAX_INT}}, id="platform-name-edges"),
        pytest.param({"safety": 0.0}, id="safety-zero"),
        pytest.param({"safety": 0.999}, id="safety-below-one"),
    ],
)
def test_boundary_values_are_accepted(overrides: dict[str, Any]) -> None:
    record = decode_record(pack(raw_record(**overrides)))
    expected = raw_record(**overrides)
    assert record.to_wire() == expected


def test_payload_of_exactly_max_bytes_is_accepted() -> None:
    payload = padded_to(raw_record(), MAX_RECORD_BYTES)
    assert len(payload) == MAX_RECORD_BYTES
    assert decode_record(payload).sku == "SKU-1"


# -- decode_record: rejected ---------------------------------------------------


def test_oversized_payload_is_rejected_before_decoding() -> None:
    assert record_reason(b"\xc1" * (MAX_RECORD_BYTES + 1)) == "oversized"
    assert record_reason(padded_to(raw_record(), MAX_RECORD_BYTES + 1)) == "oversized"


def test_max_bytes_argument_is_honoured() -> None:
    payload = pack(raw_record())
    assert record_reason(payload, max_bytes=len(payload) - 1) == "oversized"
    assert decode_record(payload, max_bytes=len(payload)).qty == 10


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(b"\x84\xa3sku", id="truncated-map"),
        pytest.param(pack(raw_record()) + b"\x00", id="trailing-bytes"),
        pytest.param(b"\x81\xa3sku\xa2\xff\xfe", id="invalid-utf8"),
        pytest.param(pack({1: 2}), id="int-map-key"),
        pytest.param(b'{"sku": "a", "qty": 1, "ver": 1, "ts": 1}', id="json"),
    ],
)
def test_undecodable_bytes(payload: bytes) -> None:
    assert record_reason(payload) == "undecodable"


@pytest.mark.parametrize("value", [[1, 2], "SKU-1", None, 7, 1.5, b"raw", True])
def test_non_map_is_rejected(value: object) -> None:
    assert record_reason(pack(value)) == "not_a_map"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(raw_record(sku=None), id="nil"),
        pytest.param(raw_record(sku=12), id="int"),
        pytest.param(raw_record(sku=b"SKU-1"), id="bytes"),
        pytest.param(raw_record(sku=""), id="empty"),
        pytest.param(raw_record(sku="x" * 65), id="65-chars"),
        pytest.param(raw_record(sku="a{b"), id="open-brace"),
        pytest.param(raw_record(sku="a}b"), id="close-brace"),
        pytest.param(raw_record(sku="a\nb"), id="newline"),
        pytest.param(raw_record(sku="a\x00"), id="nul"),
        pytest.param(raw_record(sku="\x1f"), id="control"),
    ],
)
def test_bad_sku(raw: dict[str, Any]) -> None:
    assert record_reason(pack(raw)) == "bad_field"


@pytest.mark.parametrize("field", ["sku", "qty", "ver", "ts"])
def test_missing_required_field(field: str) -> None:
    with pytest.raises(BadMessage) as info:
        decode_record(pack(without(field)))
    assert info.value.reason == "missing_field"
    assert info.value.detail == field


@pytest.mark.parametrize("field", ["qty", "ver", "ts", "initial", "reserve"])
@pytest.mark.parametrize(
    "value",
    [-1, 1.0, 2.5, True, False, "5", b"5", [5], {"n": 5}, MAX_INT + 1, 2**64 - 1, -(2**63)],
    ids=repr,
)
def test_bad_counts(field: str, value: object) -> None:
    assert record_reason(pack(raw_record(**{field: value}))) == "bad_field"


@pytest.mark.parametrize("field", ["qty", "ver", "ts"])
def test_nil_required_count_is_bad_field(field: str) -> None:
    assert record_reason(pack(raw_record(**{field: None}))) == "bad_field"


def test_version_zero_is_rejected() -> None:
    with pytest.raises(BadMessage) as info:
        decode_record(pack(raw_record(ver=0)))
    assert info.value.reason == "bad_field"
    assert "ver" in info.value.detail


@pytest.mark.parametrize(
    "name", ["n" * (MAX_NAME_CHARS + 1), 5, b"bytes", ["a"]], ids=["too-long", "int", "bytes", "list"]
)
def test_bad_name(name: object) -> None:
    assert record_reason(pack(raw_record(name=name))) == "bad_field"


@pytest.mark.parametrize(
    "platforms",
    [
        pytest.param({"Douyin": 1}, id="uppercase"),
        pytest.param({"": 1}, id="empty-name"),
        pytest.param({"a" * 33: 1}, id="33-chars"),
        pytest.param({"shop 1": 1}, id="space"),
        pytest.param({"a.b": 1}, id="dot"),
        pytest.param({"douyin": -1}, id="negative"),
        pytest.param({"douyin": 1.5}, id="float"),
        pytest.param({"douyin": True}, id="bool"),
        pytest.param({"douyin": None}, id="nil-value"),
        pytest.param({"douyin": MAX_INT + 1}, id="above-max-int"),
        pytest.param([1], id="non-empty-array"),
        pytest.param("douyin", id="string"),
        pytest.param(3, id="int"),
        pytest.param({f"p{i}": 1 for i in range(MAX_PLATFORMS + 1)}, id="too-many"),
    ],
)
def test_bad_platforms(platforms: object) -> None:
    assert record_reason(pack(raw_record(platforms=platforms))) == "bad_field"


@pytest.mark.parametrize(
    "safety", [1.0, 1, 1.5, -0.01, -1, True, "0.2", float("nan"), float("inf"), [0.2]], ids=repr
)
def test_safety_outside_unit_interval(safety: object) -> None:
    assert record_reason(pack(raw_record(safety=safety))) == "bad_field"


# -- encode_record -------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        StockRecord("SKU-1", 0, 1, 0),
        StockRecord("SKU-1", MAX_INT, MAX_INT, MAX_INT),
        StockRecord(
            "商品-1", 7, 3, TS, name="Tee", initial=100, platforms={"douyin": 5, "tb": 2}, reserve=9,
            safety=0.3,
        ),
        StockRecord("SKU-1", 1, 2, TS, platforms={}),
        StockRecord("SKU-1", 1, 2, TS, safety=0.0),
    ],
    ids=["minimal", "max", "full", "empty-platforms", "zero-safety"],
)
def test_encode_record_round_trips(record: StockRecord) -> None:
    assert decode_record(encode_record(record)) == record


def test_encode_record_omits_absent_fields() -> None:
    assert msgpack.unpackb(encode_record(StockRecord("A", 1, 2, 3))) == {
        "sku": "A", "qty": 1, "ver": 2, "ts": 3,
    }


# -- ws_binary_frame -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header_len"),
    [(0, 2), (1, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)],
)
def test_ws_binary_frame_matches_websockets(size: int, header_len: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])
    frame = ws_binary_frame(payload)
    assert frame == expected
    assert len(frame) == size + header_len
    assert frame[0] == 0x82  # FIN + binary opcode
    assert frame[header_len:] == payload


# -- keys and channels -----------------------------------------------------------


def test_key_and_channel_layout() -> None:
    assert stock_key("room-1") == "stockwire:{room-1}:stock"
    assert channel("room-1") == "stockwire:{room-1}:updates"


@pytest.mark.parametrize("room", ["a", "room-1", "Live_2024.12", "9" * 64])
def test_room_of_channel_round_trips(room: str) -> None:
    assert room_of_channel(channel(room)) == room
    assert room_of_channel(channel(room).encode()) == room


@pytest.mark.parametrize(
    "name",
    [
        "stockwire:{room-1}:stock",
        "other:{room-1}:updates",
        "stockwire:room-1:updates",
        "stockwire:{room-1}:updates:x",
        "xstockwire:{room-1}:updates",
        "stockwire:{room-1}",
        "",
        b"__keyspace@0__:stockwire:{room-1}:stock",
        b"stockwire:{room-1}:stock",
    ],
)
def test_room_of_channel_rejects_foreign_names(name: str | bytes) -> None:
    assert room_of_channel(name) is None


@pytest.mark.parametrize("room", ["a", "A", "9", "room-1", "room_1", "room.1", "R-1_b.c", "a" * 64])
def test_valid_room_accepts(room: str) -> None:
    assert valid_room(room) is True


@pytest.mark.parametrize(
    "room",
    ["", "-a", "_a", ".a", "a" * 65, "a b", "a/b", "a:b", "a{b}", "é", "room\n", "../etc", "a*"],
)
def test_valid_room_rejects(room: str) -> None:
    assert valid_room(room) is False


# -- decode_client_frame -----------------------------------------------------------


def test_client_resync() -> None:
    assert decode_client_frame(pack({"t": "resync"})) == ClientMessage(kind="resync", id=None)


def test_client_ping_with_id() -> None:
    assert decode_client_frame(pack({"t": "ping", "id": 3})) == ClientMessage(kind="ping", id=3)


@pytest.mark.parametrize("ident", [0, MAX_INT])
def test_client_id_bounds_accepted(ident: int) -> None:
    assert decode_client_frame(pack({"t": "ping", "id": ident})).id == ident


def test_client_frame_ignores_extra_keys_and_accepts_bytearray() -> None:
    data = bytearray(pack({"t": "ping", "id": 1, "extra": [1, 2]}))
    assert decode_client_frame(data) == ClientMessage("ping", 1)


def test_client_frame_of_exactly_max_size_is_accepted() -> None:
    data = padded_to({"t": "resync"}, MAX_CLIENT_FRAME)
    assert decode_client_frame(data) == ClientMessage("resync")


@pytest.mark.parametrize("text", ['{"t": "resync"}', "", "ping"])
def test_client_text_frames_are_rejected(text: str) -> None:
    assert client_reason(text) == "text_frame"


def test_client_oversized_frames_are_rejected() -> None:
    assert client_reason(b"\x00" * (MAX_CLIENT_FRAME + 1)) == "oversized"
    assert client_reason(padded_to({"t": "resync"}, MAX_CLIENT_FRAME + 1)) == "oversized"


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x81\xa1t", pack({"t": "resync"}) + b"\x01", pack({2: "resync"}), b"\xa2\xff\xfe"],
    ids=["empty", "never-used", "truncated", "trailing", "int-key", "invalid-utf8"],
)
def test_client_garbage_is_undecodable(data: bytes) -> None:
    assert client_reason(data) == "undecodable"


@pytest.mark.parametrize(
    "value",
    [
        {"t": "subscribe"},
        {"t": "RESYNC"},
        {"t": b"resync"},
        {"t": None},
        {"t": 1},
        {},
        {"type": "resync"},
        ["resync"],
        "resync",
        None,
    ],
    ids=repr,
)
def test_client_unknown_types(value: object) -> None:
    assert client_reason(pack(value)) == "unknown_type"


@pytest.mark.parametrize("t_value", [[], ["resync"], {}, {"a": 1}], ids=repr)
def test_client_unhashable_type_field_is_unknown_type(t_value: object) -> None:
    assert client_reason(pack({"t": t_value})) == "unknown_type"


@pytest.mark.parametrize(
    "ident", [-1, 1.5, 3.0, True, False, "3", b"3", [3], MAX_INT + 1, 2**64 - 1], ids=repr
)
def test_client_bad_ids(ident: object) -> None:
    assert client_reason(pack({"t": "ping", "id": ident})) == "bad_field"
