"""A broker handler that records what it is told, for broker tests."""

from __future__ import annotations

import asyncio

from gateway.protocol import StockRecord, decode_record


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, StockRecord]] = []
        self.resyncs = 0
        self.disconnects = 0
        self._changed = asyncio.Event()

    def on_message(self, room: str, payload: bytes) -> None:
        self.messages.append((room, decode_record(payload)))
        self._changed.set()

    async def on_resync(self, rooms: object = ()) -> None:
        self.resyncs += 1
        self._changed.set()

    def on_disconnect(self) -> None:
        self.disconnects += 1
        self._changed.set()

    async def until(self, predicate: object, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not predicate():  # type: ignore[operator]
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
