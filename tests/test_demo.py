"""The demo's flash sale, driven as `stockwire demo` drives it, against the in-process broker.

Rounds are a couple of seconds long and nobody orders (``base_rate=0``), so
the only stock changes are the ones the sale schedules: batches and restocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.demo import FlashSale, Product
from gateway.server import Gateway
from gateway.stock import OpKind, OpResult, StockOp
from tests.conftest import gateway_settings, token
from tests.screens import Screen

ROOM = "demo-test"
#: A release may run this much after its declared time on a busy 2-core machine.
LATE_MS = 1_000
#: Wall and loop clocks are read a moment apart when the round opens.
EARLY_MS = 20


@dataclass(frozen=True, slots=True)
class Executed:
    wall_ms: int
    op: StockOp
    result: OpResult


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    # No Redis at all: the demo runs on the memory broker.
    gw = Gateway(gateway_settings("redis://127.0.0.1:1/0", broker="memory", stats_interval=0.05))
    await gw.start()
    yield gw
    await gw.stop()


def recording(gateway: Gateway, log: list[Executed]):  # type: ignore[no-untyped-def]
    async def execute(room: str, op: StockOp) -> OpResult:
        result = await gateway.broker.execute(room, op)
        log.append(Executed(int(time.time() * 1000), op, result))
        return result

    return execute


def ops(log: list[Executed], kind: OpKind, sku: str) -> list[Executed]:
    return [e for e in log if e.op.kind is kind and e.op.sku == sku]


async def test_each_batch_is_released_once_at_the_time_the_host_counts_down_to(gateway: Gateway) -> None:
    catalogue = (
        Product("drop", "Drop", 10, 12, batches=((0.8, 5), (1.6, 7))),
        Product("tee", "Tee", 20, 0, restocks=((1.2, 4),)),
    )
    log: list[Executed] = []
    sale = FlashSale(recording(gateway, log), ROOM, base_rate=0, catalogue=catalogue)
    await sale.open()  # as the demo does: open, print the URLs, then run
    async with Screen(f"{gateway.url}/ws/{ROOM}?role=host&token={token('host', (ROOM,))}") as host:
        await sale.run(rounds=2, seconds=2.2)
        await host.until(lambda s: s.items.get("drop", {}).get("qty") == 22 and s.items["tee"]["qty"] == 24)
    assert host.violations == []

    sets = ops(log, OpKind.SET, "drop")
    assert len(sets) == 2, "one SET per round"
    assert [ops(log, OpKind.SET, sku)[0].result.ver for sku in ("drop", "tee")] == [1, 1], "opened once"
    declared = [b for s in sets for b in s.op.fields["batches"]]
    releases = ops(log, OpKind.RELEASE, "drop")
    assert [e.op.amount for e in releases] == [5, 7, 5, 7], "each batch once per round"
    assert all(e.result.ok for e in releases)
    for batch, release in zip(declared, releases, strict=True):
        assert batch["qty"] == release.op.amount
        assert batch["at"] - EARLY_MS <= release.wall_ms <= batch["at"] + LATE_MS
    restocks = ops(log, OpKind.ADJUST, "tee")
    assert [e.op.amount for e in restocks] == [4, 4], "the warehouse restock once per round"
    assert all(e.result.ok for e in restocks)

    # The host was counting down to exactly the batches that were released, and to no others.
    shown = [f["skus"]["drop"]["next_batch"] for f in host.frames
             if f["t"] == "stats" and "next_batch" in f["skus"].get("drop", {})]
    assert shown, "the host never saw a next batch"
    assert all(b in declared for b in shown), shown
    assert {b["at"] for b in shown} == {b["at"] for b in declared}


async def test_a_new_round_cancels_the_batches_the_last_one_left_pending(gateway: Gateway) -> None:
    # Each round is shorter than the batch's time: it must never be released.
    catalogue = (Product("late", "Late", 10, 5, batches=((0.9, 5),), restocks=((0.9, 3),)),)
    log: list[Executed] = []
    sale = FlashSale(recording(gateway, log), ROOM, base_rate=0, catalogue=catalogue)
    await sale.run(rounds=2, seconds=0.5)
    # Stopped like the demo stops it (cancelled): nothing it scheduled may run afterwards.
    task = asyncio.create_task(sale.run())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.2)
    assert len(ops(log, OpKind.SET, "late")) == 3
    assert ops(log, OpKind.RELEASE, "late") == []
    assert ops(log, OpKind.ADJUST, "late") == []


async def test_orders_sell_out_and_the_reserve_not_promised_to_batches_is_released(gateway: Gateway) -> None:
    catalogue = (Product("hot", "Hot", 30, 20, batches=((60.0, 5),)),)
    log: list[Executed] = []
    sale = FlashSale(recording(gateway, log), ROOM, base_rate=200, catalogue=catalogue, seed=1)
    await sale.run(rounds=1, seconds=4.0)  # sold out within a second; the reserve 2 s later
    assert sale.refused > 0
    assert "hot" in sale.sold_out_seen
    assert [e.op.amount for e in ops(log, OpKind.RELEASE, "hot")] == [15]
