"""stock.lua (in Redis) and apply_op (in Python) must agree on every case, and
whatever the script stores and publishes, the gateway's decoder must accept."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.brokers.memory import MemoryBroker
from gateway.brokers.redis import RedisBroker
from gateway.protocol import BadMessage, channel, decode_record, epoch_key, stock_key
from gateway.stock import LUA_SCRIPT, OpKind, StockOp
from tests.brokers.helpers import Recorder
from tests.conftest import RedisServer

CASES: list[StockOp] = [
    StockOp(OpKind.SET, "a", 100, {"name": "T恤 white", "initial": 100, "reserve": 10,
                                    "platforms": {"douyin": 60, "taobao": 40}, "safety": 0.15}),
    StockOp(OpKind.ADJUST, "a", -5, platform="douyin"),
    StockOp(OpKind.ADJUST, "a", -41, platform="taobao"),
    StockOp(OpKind.ADJUST, "a", -40, platform="taobao"),
    StockOp(OpKind.ADJUST, "a", -1, platform="kuaishou"),
    StockOp(OpKind.ADJUST, "a", 3),
    StockOp(OpKind.RELEASE, "a", 11),
    StockOp(OpKind.RELEASE, "a", 10),
    StockOp(OpKind.RELEASE, "a", 0),
    StockOp(OpKind.SET, "a", 7, version=50),
    StockOp(OpKind.SET, "a", 8, version=50),
    StockOp(OpKind.SET, "a", 9, {"platforms": {}}),
    StockOp(OpKind.SET, "b", 1, {"colour": "red"}),
    StockOp(OpKind.SET, "b", 1, {"initial": -1}),
    StockOp(OpKind.SET, "b", 1, {"safety": 1.0}),
    StockOp(OpKind.SET, "b", 1, {"platforms": {"Bad Name": 1}}),
    StockOp(OpKind.SET, "b", 1, {"name": "x" * 201}),
    StockOp(OpKind.SET, "b{x}", 1),
    StockOp(OpKind.SET, "b", 1, platform="BAD"),
    StockOp(OpKind.ADJUST, "never-set", -1),
    StockOp(OpKind.RELEASE, "never-set", 1),
    StockOp(OpKind.SET, "c", 0, {"name": "名" * 200}),
    StockOp(OpKind.SET, "d", 5, {"batches": [{"at": 1_800_000_000_000, "qty": 500},
                                             {"at": 1_800_000_600_000, "qty": 250}]}),
    StockOp(OpKind.SET, "d", 5, {"batches": []}),
    StockOp(OpKind.SET, "d", 5, {"batches": [{"at": 1, "qty": -1}]}),
    StockOp(OpKind.SET, "d", 5, {"batches": [{"at": 1, "qty": 1, "x": 2}]}),
    StockOp(OpKind.SET, "d", 5, {"batches": {"at": 1, "qty": 1}}),
    StockOp(OpKind.SET, "d", 5, {"batches": [{"at": 1}]}),
    # What the gateway would drop must be refused, or the SKU vanishes from screens.
    StockOp(OpKind.SET, "e", 5, {"safety": float("nan")}),
    StockOp(OpKind.SET, "e", 5, {"safety": float("inf")}),
    StockOp(OpKind.SET, b"\xff", 5),  # type: ignore[arg-type]  # not UTF-8
    StockOp(OpKind.SET, b"e\xc0\xaf", 5),  # type: ignore[arg-type]  # overlong "/"
    StockOp(OpKind.SET, b"e\xed\xa0\x80", 5),  # type: ignore[arg-type]  # a surrogate
    StockOp(OpKind.SET, b"e\xf4\x90\x80\x80", 5),  # type: ignore[arg-type]  # above U+10FFFF
    StockOp(OpKind.SET, b"e\xe4\xb8", 5),  # type: ignore[arg-type]  # truncated
    StockOp(OpKind.SET, "😀" * 64, 5),
    StockOp(OpKind.SET, "😀" * 65, 5),
    StockOp(OpKind.SET, "e", 5, {"name": "\U0010ffff\uffff\x7f"}),
    StockOp(OpKind.SET, "e", "1e3"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", "0x10"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", " 5"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", "5 "),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", "+5"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", "1.0"),  # type: ignore[arg-type]
    StockOp(OpKind.ADJUST, "e", "-1e0"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", 6, version="1e3"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", 6, version="0x10"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", 6, version=" 50"),  # type: ignore[arg-type]
    StockOp(OpKind.SET, "e", 6, version=60),
    StockOp(OpKind.SET, "e", 7, {"ep": "forged"}),
]


def random_ops(seed: int, n: int = 300) -> list[StockOp]:
    rng = random.Random(seed)
    ops = [StockOp(OpKind.SET, s, rng.randint(0, 50), {"reserve": rng.randint(0, 20),
                                                       "platforms": {"douyin": 10, "kuaishou": 5}})
           for s in "xyz"]
    for _ in range(n):
        sku = rng.choice("xyz")
        kind = rng.choice([OpKind.ADJUST, OpKind.ADJUST, OpKind.ADJUST, OpKind.RELEASE, OpKind.SET])
        amount = rng.randint(-8, 4) if kind is OpKind.ADJUST else rng.randint(0, 10)
        platform = rng.choice([None, "douyin", "kuaishou"]) if kind is OpKind.ADJUST else None
        ops.append(StockOp(kind, sku, amount, platform=platform))
    return ops


@pytest.mark.parametrize("ops", [CASES, random_ops(1), random_ops(2)], ids=["cases", "rand1", "rand2"])
async def test_lua_and_python_agree(redis_url: str, ops: list[StockOp]) -> None:
    memory, redis = MemoryBroker(), RedisBroker(redis_url)
    for broker in (memory, redis):
        await broker.start(Recorder())
    try:
        for op in ops:
            expected = await memory.execute("parity", op)
            actual = await redis.execute("parity", op)
            got, want = (actual.status, actual.qty, actual.ver), (expected.status, expected.qty, expected.ver)
            assert got == want, op
        stored = {}
        for broker in (memory, redis):
            loaded = await broker.load("parity")
            records = sorted(map(decode_record, loaded.records), key=lambda r: r.sku)
            assert {r.ep for r in records} == {loaded.epoch}  # each broker's own epoch id
            stored[broker] = [r.to_wire() | {"ts": 0, "ep": ""} for r in records]
        assert stored[redis] == stored[memory]
    finally:
        await memory.stop()
        await redis.stop()


# -- the script never stores what the gateway would drop --------------------------------

ROOM = "accepts"
KEYS = [stock_key(ROOM), channel(ROOM), epoch_key(ROOM)]

# Mostly well-formed, so that most calls succeed and the decoder gets a record
# to judge: one field at a time is the odd one.
loose_numbers = (st.integers(-(2**60), 2**60).map(str)
                 | st.sampled_from(["1e3", "0x10", " 5", "5 ", "+5", "-0", "007", "1.0", "inf", "nan", ""])
                 | st.text(max_size=6))
amounts = st.integers(0, 50).map(str) | st.integers(0, 50).map(str) | loose_numbers
versions = st.just("") | st.just("") | st.integers(1, 2**53).map(str) | loose_numbers
raw_text = st.binary(max_size=12) | st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass"))
skus = st.sampled_from([b"a", b"b"]) | st.sampled_from([b"a", b"b"]) | raw_text
field_values: dict[str, st.SearchStrategy[Any]] = {
    "name": raw_text | st.integers(),
    "safety": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 2),
    "initial": st.integers(-2, 2**54) | st.floats(allow_nan=True),
    "reserve": st.integers(-2, 2**54),
    "platforms": st.dictionaries(st.sampled_from(["douyin", "taobao", "Bad", ""]), st.integers(-1, 9),
                                 max_size=3),
    "batches": st.lists(st.fixed_dictionaries({"at": st.integers(-1, 9), "qty": st.integers(-1, 9)}),
                        max_size=2),
}
one_field = st.sampled_from(sorted(field_values)).flatmap(
    lambda key: field_values[key].map(lambda value: {key: value}))
field_maps = st.just({}) | one_field | one_field


def pack_fields(fields: dict[str, Any]) -> bytes:
    # use_bin_type=False: bytes travel as msgpack *str*, the only string type
    # Redis's cmsgpack reads, so invalid UTF-8 reaches the script as text.
    return msgpack.packb(fields, use_bin_type=False) if fields else b""


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(["set", "set", "adjust", "release"]),
    sku=skus,
    amount=amounts,
    fields=field_maps,
    version=versions,
    platform=st.sampled_from(["", "", "douyin", "BAD"]),
)
@example(op="set", sku=b"nan", amount="1", fields={"safety": float("nan")}, version="", platform="")
@example(op="set", sku=b"name", amount="1", fields={"name": b"\xff\xfe"}, version="", platform="")
@example(op="set", sku=b"name", amount="1", fields={"name": b"\xed\xa0\x80"}, version="", platform="")
@example(op="set", sku=b"\xe4\xb8", amount="1", fields={}, version="", platform="")
def test_whatever_the_script_accepts_the_gateway_decodes(
    redis_server: RedisServer, op: str, sku: bytes, amount: str, fields: dict[str, Any],
    version: str, platform: str,
) -> None:
    client = redis_server.client()
    script = client.register_script(LUA_SCRIPT)
    status, *_ = script(keys=KEYS, args=[op, sku, amount, pack_fields(fields), version, platform])
    if status != b"ok":
        return
    stored = client.hget(KEYS[0], sku)
    assert stored is not None
    try:
        record = decode_record(stored)
    except BadMessage as exc:
        pytest.fail(f"the script stored a record the gateway drops ({exc}): {msgpack.unpackb(stored)!r}")
    assert record.ep == client.get(KEYS[2]).decode()
