"""An in-test gateway double and frame builders for the client SDK tests."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
from websockets.asyncio.server import Server, ServerConnection, serve

ROOM = "room-1"
WAIT = 5.0


def item(sku: str, qty: int, ver: int, st: str = "ok", ts: int = 1_000, **extra: Any) -> dict:
    return {"sku": sku, "qty": qty, "st": st, "ver": ver, "ts": ts, **extra}


def snap(seq: int, items: list[dict], room: str = ROOM, ts: int = 2_000) -> dict:
    return {"t": "snapshot", "room": room, "seq": seq, "ts": ts, "items": items}


def upd(seq: int, items: list[dict], room: str = ROOM, ts: int = 2_000) -> dict:
    return {"t": "update", "room": room, "seq": seq, "ts": ts, "items": items}


def wire(frame: dict) -> bytes:
    return msgpack.packb(frame)


# -- RoomView: the protocol rules without I/O ---------------------------------------


class FakeGateway:
    """The server side of the protocol, driven step by step by each test.

    Every accepted connection is queued for the test, which sends frames, reads
    what the client sent and closes it with whatever code it wants.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.paths: list[str] = []
        self._connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeGateway:
        self._server = await serve(self._handle, "127.0.0.1", self.port, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        await self._connections.put(ws)
        await ws.wait_closed()

    async def accept(self) -> ServerConnection:
        return await asyncio.wait_for(self._connections.get(), WAIT)

    def pending(self) -> int:
        return self._connections.qsize()


async def received(ws: ServerConnection) -> Any:
    return msgpack.unpackb(await asyncio.wait_for(ws.recv(), WAIT))
