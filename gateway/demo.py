"""A simulated flash sale, for ``stockwire demo`` and for rehearsals.

It drives stock through any ``execute(room, op)`` coroutine: the in-process
broker for the demo, or :class:`clients.publisher.Publisher` against Redis.
The story repeats: a live room opens with four products, a host's remark
makes orders surge, products sell out, the reserve is released, a restock
arrives, and the next round starts.
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


CATALOGUE = (
    Product("tshirt-white-m", "基础白T恤 Classic T-shirt", 3000, 500, popularity=1.6),
    Product("lipstick-520", "丝绒口红 #520 Velvet Lipstick", 5000, 800,
            {"douyin": 2500, "kuaishou": 1500, "taobao": 1000}, popularity=2.2),
    Product("sneaker-42", "限量跑鞋 Limited Runner 42", 800, 100, popularity=0.9,
            batches=((20.0, 50), (40.0, 50))),
    Product("serum-30ml", "精华液 30ml Serum", 2000, 300, popularity=1.0),
)


class FlashSale:
    """Orders per second follow a surge curve; sold-out SKUs get their reserve."""

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

    async def open(self) -> None:
        """Put every product on sale at its planned quantity; schedule its batches."""
        loop = asyncio.get_running_loop()
        now_ms = int(time.time() * 1000)
        for p in self.catalogue:
            fields: dict[str, Any] = {"name": p.name, "initial": p.initial, "reserve": p.reserve}
            if p.platforms:
                fields["platforms"] = dict(p.platforms)
            if p.batches:
                fields["batches"] = [{"at": now_ms + int(at * 1000), "qty": qty} for at, qty in p.batches]
                for at, qty in p.batches:
                    loop.call_later(at, self._release_batch, p, qty)
            result = await self.execute(self.room, StockOp(OpKind.SET, p.sku, p.initial, fields))
            if not result.ok:
                raise RuntimeError(f"could not open {p.sku}: {result}")
        self.sold_out_seen.clear()

    def _release_batch(self, product: Product, units: int) -> None:
        self._background_op(StockOp(OpKind.RELEASE, product.sku, units))

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
                asyncio.get_running_loop().call_later(2.0, self._release_soon, product)

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
        await self.open()
        loop = asyncio.get_running_loop()
        start = loop.time()
        owed = 0.0
        while (t := loop.time() - start) < seconds:
            owed += self.rate(t) * tick
            while owed >= 1:
                owed -= 1
                await self.order()
            await asyncio.sleep(tick)

    async def run(self, rounds: int | None = None, seconds: float = 60.0) -> None:
        n = 0
        while rounds is None or n < rounds:
            await self.run_round(seconds)
            n += 1
