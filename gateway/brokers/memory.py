"""In-process broker: the whole Redis contract with no Redis.

It backs ``stockwire demo`` and any single-process deployment that needs no
shared state.  Publishing delivers synchronously through the event loop, in
order, exactly like one Redis pub/sub connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from gateway.brokers.base import Broker, BrokerHandler, BrokerUnavailable
from gateway.protocol import StockRecord, Stored, encode_record
from gateway.stock import OpResult, StockOp, apply_op


class MemoryBroker(Broker):
    def __init__(self) -> None:
        self._stock: dict[str, dict[str, StockRecord]] = {}
        self._epochs: dict[str, str] = {}
        self._subscribed: set[str] = set()
        self._handler: BrokerHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self._handler = None
        self._subscribed.clear()

    @property
    def ready(self) -> bool:
        return self._handler is not None

    async def subscribe(self, room: str) -> None:
        if self._handler is None:
            raise BrokerUnavailable("broker not started")
        self._subscribed.add(room)

    async def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)

    async def load(self, room: str) -> Stored:
        records = [encode_record(r) for r in self._stock.get(room, {}).values()]
        return Stored(self._epochs.get(room, ""), records)

    def wipe(self) -> None:
        """Forget every room, as a Redis restart without persistence (or a
        FLUSHALL) would; subscriptions stay, as they do across a FLUSHALL."""
        self._stock.clear()
        self._epochs.clear()

    async def report_viewers(self, room: str, node: str, count: int, ttl: float) -> int:
        return count  # one process: this node is every node

    async def execute(self, room: str, op: StockOp) -> OpResult:
        records = self._stock.setdefault(room, {})
        # Like stock.lua: the first write creates the epoch, and every record carries it.
        epoch = self._epochs.get(room) or uuid.uuid4().hex
        result, record = apply_op(records.get(op.sku), op, int(time.time() * 1000), epoch)
        if record is not None:
            self._epochs[room] = epoch
            records[op.sku] = record
            if room in self._subscribed and self._handler is not None and self._loop is not None:
                # Deliver on the next loop turn, as a network broker would.
                self._loop.call_soon(self._handler.on_message, room, encode_record(record))
        return result
