"""A deliberately plain test client: raw frames in, state and violations out.

It is independent of the client SDK so that end-to-end tests judge the gateway
by the protocol document alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class Screen:
    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: list[dict[str, Any]] = []
        self.items: dict[str, dict[str, Any]] = {}
        self.violations: list[str] = []
        self.seq: int | None = None
        self.ws: ClientConnection | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Screen:
        self.ws = await connect(self.url, max_size=None)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                self._apply(msgpack.unpackb(data))
                self._changed.set()
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self.close_reason = self.ws.close_reason or ""
        self._changed.set()

    def _apply(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        if frame["t"] == "snapshot":
            self.items = {i["sku"]: i for i in frame["items"]}
            self.seq = frame["seq"]
            return
        if frame["t"] != "update":
            return
        if self.seq is not None and frame["seq"] != self.seq + 1:
            self.violations.append(f"seq {frame['seq']} after {self.seq}")
        self.seq = frame["seq"]
        for item in frame["items"]:
            old = self.items.get(item["sku"])
            if old is not None and item["ver"] < old["ver"]:
                self.violations.append(f"{item['sku']} went back from {old['ver']} to {item['ver']}")
                continue
            self.items[item["sku"]] = item

    def qty(self) -> dict[str, int]:
        return {sku: item["qty"] for sku, item in self.items.items()}

    async def until(self, predicate: Any, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def closed(self, timeout: float = 5.0) -> int | None:
        await self.until(lambda s: s.close_code is not None, timeout)
        return self.close_code
