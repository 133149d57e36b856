"""stock.lua (in Redis) and apply_op (in Python) must agree on every case."""

from __future__ import annotations

import random

import pytest

from gateway.brokers.memory import MemoryBroker
from gateway.brokers.redis import RedisBroker
from gateway.protocol import decode_record
from gateway.stock import OpKind, StockOp
from tests.brokers.helpers import Recorder

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
            loaded = (await broker.load("parity")).records
            records = sorted(map(decode_record, loaded), key=lambda r: r.sku)
            stored[broker] = [r.to_wire() | {"ts": 0} for r in records]
        assert stored[redis] == stored[memory]
    finally:
        await memory.stop()
        await redis.stop()
