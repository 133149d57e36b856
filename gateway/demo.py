"""A simulated flash sale, for ``stockwire demo`` and for rehearsals.

It drives stock through any ``execute(room, op)`` coroutine: the in-process
broker for the demo, or :class:`clients.publisher.Publisher` against Redis.
The story repeats every round: a live room opens with four products, a host's
remark makes orders surge, products sell out, sold-out products get their
reserve released, the sneaker's flash-sale batches open at their declared
times, the warehouse delivers a T-shirt restock, and the next round puts every
product back on sale at its planned quantity.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.stock import OpKind, OpResult, Status, StockOp

Execute = Callable[[str, StockOp], Awaitable[OpResult]]


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    initial: int
    reserve: int
    platforms: dict[str, int] = field(default_factory=dict)
    popularity: float = 1.0
    #: Timed flash-sale batches: (seconds into the round, units released from reserve).
    batches: tuple[tuple[float, int], ...] = ()
    #: Warehouse deliveries: (seconds into the round, units added to the stock).
    restocks: tuple[tuple[float, int], ...] = ()


CATALOGUE = (
    Product("tshirt-white-m", "基础白T恤 Classic T-shirt", 3000, 500, popularity=1.6,
            restocks=((30.0, 1000),)),
    Product("lipstick-520", "丝绒口红 #520 Velvet Lipstick", 5000, 800,
            {"douyin": 2500, "kuaishou": 1500, "taobao": 1000}, popularity=2.2),
    Product("sneaker-42", "限量跑鞋 Limited Runner 42", 800, 100, popularity=0.9,
            batches=((20.0, 50), (40.0, 50))),
    Product("serum-30ml", "精华液 30ml Serum", 2000, 300, popularity=1.0),
)


class FlashSale:
    """Orders per second follow a surge curve; sold-out SKUs get their reserve.

    A round starts when the sale opens: :meth:`open` sets every product and
    schedules the round's batches and restocks, and :meth:`run_round` runs
    the orders of the round that is open (opening one first if none is).  So
    the demo can open the sale, print its URLs, then run it, and each batch is
    released exactly once, at the time the record declares to the host.
    Opening again cancels whatever the previous round still had pending.
    """

    def __init__(self, execute: Execute, room: str = "demo", *, base_rate: float = 150.0,
                 catalogue: tuple[Product, ...] = CATALOGUE, seed: int | None = None) -> None:
        self.execute = execute
        self.room = room
        self.base_rate = base_rate
        self.catalogue = catalogue
        self.random = random.Random(seed)
        self.sold_out_seen: set[str] = set()
        self.orders = 0
        self.refused = 0
        self._background: set[asyncio.Future[OpResult]] = set()
        self._timers: list[asyncio.TimerHandle] = []
        #: Loop time the open round started at; None once its orders have run.
        self._round_start: float | None = None

    async def open(self) -> None:
        """Put every product on sale at its planned quantity; schedule its batches and restocks."""
        self.close()
        loop = asyncio.get_running_loop()
        self._round_start = loop.time()
        now_ms = int(time.time() * 1000)
        for p in self.catalogue:
            fields: dict[str, Any] = {"name": p.name, "initial": p.initial, "reserve": p.reserve}
            if p.platforms:
                fields["platforms"] = dict(p.platforms)
            if p.batches:
                fields["batches"] = [{"at": now_ms + int(at * 1000), "qty": qty} for at, qty in p.batches]
            result = await self.execute(self.room, StockOp(OpKind.SET, p.sku, p.initial, fields))
            if not result.ok:
                raise RuntimeError(f"could not open {p.sku}: {result}")
        # Timers count from the round's start, like the `at` times the records declare.
        for p in self.catalogue:
            for at, qty in p.batches:
                self._later(at, StockOp(OpKind.RELEASE, p.sku, qty))
            for at, qty in p.restocks:
                self._later(at, StockOp(OpKind.ADJUST, p.sku, qty))
        self.sold_out_seen.clear()

    def close(self) -> None:
        """Cancel the batches, restocks and reserve releases still pending."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def _later(self, at: float, op: StockOp) -> None:
        """Run ``op`` ``at`` seconds after the round started."""
        assert self._round_start is not None
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._round_start + at - loop.time())
        self._timers.append(loop.call_later(delay, self._background_op, op))

    def rate(self, t: float) -> float:
        """Orders per second t seconds into a round: warm-up, KOL surge, tail."""
        if t < 5:
            return self.base_rate * 0.3
        if t < 25:
            return self.base_rate * (1 + 4 * min(1.0, (t - 5) / 5))
        return self.base_rate * 1.5

    async def order(self) -> None:
        weights = [p.popularity for p in self.catalogue]
        product = self.random.choices(self.catalogue, weights)[0]
        units = self.random.choice((1, 1, 1, 2, 3))
        platform = (self.random.choice(sorted(product.platforms)) if product.platforms else None)
        result = await self.execute(self.room, StockOp(OpKind.ADJUST, product.sku, -units,
                                                       platform=platform))
        self.orders += 1
        if result.status is Status.INSUFFICIENT:
            self.refused += 1
            if result.qty == 0 and product.sku not in self.sold_out_seen:
                self.sold_out_seen.add(product.sku)
                self._timers.append(asyncio.get_running_loop().call_later(2.0, self._release_soon, product))

    def _release_soon(self, product: Product) -> None:
        units = product.reserve - sum(qty for _, qty in product.batches)
        if units <= 0:
            return  # the reserve is already promised to timed batches
        fields = {}
        if product.platforms:
            # The released units are split evenly over the platforms.
            names = sorted(product.platforms)
            share, rest = divmod(units, len(names))
            fields["platforms"] = {n: share + (rest if i == 0 else 0) for i, n in enumerate(names)}
        self._background_op(StockOp(OpKind.RELEASE, product.sku, units, fields))

    def _background_op(self, op: StockOp) -> None:
        task = asyncio.ensure_future(self.execute(self.room, op))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run_round(self, seconds: float = 60.0, tick: float = 0.05) -> None:
        """Run the open round's orders for ``seconds`` from its start (opening one if none is)."""
        if self._round_start is None:
            await self.open()
        assert self._round_start is not None
        start, self._round_start = self._round_start, None
        loop = asyncio.get_running_loop()
        owed = 0.0
        while (t := loop.time() - start) < seconds:
            owed += self.rate(t) * tick
            while owed >= 1:
                owed -= 1
                await self.order()
            await asyncio.sleep(tick)

    async def run(self, rounds: int | None = None, seconds: float = 60.0) -> None:
        """Round after round (forever without ``rounds``); nothing stays scheduled after it."""
        n = 0
        try:
            while rounds is None or n < rounds:
                await self.run_round(seconds)
                n += 1
        finally:
            self.close()
