"""The ceiling: a server that does the WebSocket handshake and ``transport.write`` — nothing else.

    python -m loadtest.bench.raw --port P --redis-url redis://127.0.0.1:6379/0 --room bench

It subscribes (SSUBSCRIBE, raw RESP parsed by hiredis) to the same room
channel the gateway uses and, for every record published, writes one
pre-encoded binary frame to every connection: the frame is a msgpack map
spliced together from constant bytes, the sequence number, and the record
exactly as published (``{"t": "update", "room", "seq", "ts", "items": [record]}``),
so the load generator parses it exactly like a gateway frame.  A joining
client gets a snapshot of the records seen so far.

No validation, no merging, no pacing, no slow-client bound, no ping, no
metrics, no per-client state beyond a set of transports: on the same machine,
the same event loop (uvloop) and the same kernel, no Python server can fan
out faster than this, which is what the gateway's figures are compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import time
from urllib.parse import urlsplit

import hiredis
import msgpack

from gateway.protocol import channel, stock_key, ws_binary_frame

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B83"


class RawServer:
    """The connections and the room's latest records; one write per client per record."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.clients: set[asyncio.Transport] = set()
        self.records: dict[bytes, bytes] = {}
        self.seq = 0
        self.ready = False
        self._snapshot: bytes | None = None
        pack = msgpack.packb
        # A 5-entry map: t, room, seq (value follows), then ts and items are appended per frame.
        self._head = b"\x85" + pack("t") + pack("update") + pack("room") + pack(room) + pack("seq")

    def on_record(self, record: bytes) -> None:
        self.seq += 1
        sku = msgpack.unpackb(record, raw=True).get(b"sku", b"")
        self.records[sku] = record
        self._snapshot = None
        now = time.time_ns() // 1_000_000
        frame = ws_binary_frame(
            self._head + msgpack.packb(self.seq) + b"\xa2ts" + msgpack.packb(now) + b"\xa5items\x91" + record
        )
        for transport in self.clients:
            transport.write(frame)

    def snapshot(self) -> bytes:
        if self._snapshot is None:
            records = list(self.records.values())
            pack = msgpack.packb
            count = len(records)
            header = bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
            payload = (b"\x86" + pack("t") + pack("snapshot") + pack("room") + pack(self.room)
                       + pack("epoch") + pack("") + pack("seq") + pack(self.seq)
                       + pack("ts") + pack(time.time_ns() // 1_000_000) + pack("items") + header
                       + b"".join(records))
            self._snapshot = ws_binary_frame(payload)
        return self._snapshot


class Client(asyncio.Protocol):
    """Handshake, then ignore whatever the client sends (pongs) until it goes away."""

    __slots__ = ("buf", "server", "transport", "upgraded")

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.buf = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.clients.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 8192:
                self.transport.close()  # type: ignore[union-attr]
            return
        head = self.buf[:end].decode("latin-1")
        self.buf = b""
        lines = head.split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        transport = self.transport
        assert transport is not None
        key = headers.get("sec-websocket-key")
        if key is None:
            status = b"200 OK" if path == "/healthz" and self.server.ready else b"503 Service Unavailable"
            transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            transport.close()
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + self.server.snapshot())
        self.upgraded = True
        self.server.clients.add(transport)


class Subscriber(asyncio.Protocol):
    """HVALS the room once, then SSUBSCRIBE its channel; every message goes to ``on_record``."""

    def __init__(self, server: RawServer, room: str) -> None:
        self.server = server
        self.room = room
        self.reader = hiredis.Reader()
        self.loaded = False
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key, name = stock_key(self.room).encode(), channel(self.room).encode()
        # Loaded before subscribing: the harness publishes only after clients joined.
        transport.write(b"*2\r\n$5\r\nHVALS\r\n$%d\r\n%s\r\n" % (len(key), key)  # type: ignore[attr-defined]
                        + b"*2\r\n$10\r\nSSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        server = self.server
        while (reply := self.reader.gets()) is not False:
            if not self.loaded:
                self.loaded = True
                for record in reply:
                    server.on_record(record)
            elif reply[0] == b"smessage":
                server.on_record(reply[2])
            elif reply[0] == b"ssubscribe":
                server.ready = True


async def serve(port: int, redis_url: str, room: str, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    server = RawServer(room)
    parts = urlsplit(redis_url)
    _, sub = await loop.create_connection(lambda: Subscriber(server, room), parts.hostname or "127.0.0.1",
                                          parts.port or 6379)
    # backlog 100: what websockets (asyncio's default) gives the gateway, so joins compare like for like.
    listener = await loop.create_server(lambda: Client(server), host, port, backlog=100, reuse_address=True)
    async with listener:
        await sub.lost  # runs until Redis goes away or the harness terminates us


def main() -> None:
    from gateway.cli import run
    from loadtest.bench.procs import raise_nofile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--room", required=True)
    args = parser.parse_args()
    raise_nofile()
    run(serve(args.port, args.redis_url, args.room, args.host))


if __name__ == "__main__":
    main()
