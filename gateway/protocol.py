"""The wire contract: Redis key layout, publisher records, and gateway frames.

Everything a stock service or a client in another language must agree on lives
here and in ``docs/protocol.md``; the two must say the same thing.  Nothing in
this module does I/O, so every rule can be tested with plain function calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import msgpack

ROOM_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
SKU_PATTERN = r"[^\x00-\x1f{}]{1,64}"
PLATFORM_PATTERN = r"[a-z0-9_-]{1,32}"
#: A data epoch id: printable ASCII without spaces, so it is valid UTF-8 and
#: survives every client's string type unchanged.
EPOCH_PATTERN = r"[\x21-\x7e]{1,64}"
_ROOM_RE = re.compile(ROOM_PATTERN)
_SKU_RE = re.compile(SKU_PATTERN)
_PLATFORM_RE = re.compile(PLATFORM_PATTERN)
_EPOCH_RE = re.compile(EPOCH_PATTERN)

#: Largest publisher message the gateway accepts; bigger ones are dropped.
MAX_RECORD_BYTES = 8 * 1024
MAX_NAME_CHARS = 200
MAX_PLATFORMS = 16
MAX_BATCHES = 32
#: Quantities and versions must fit in a signed 53-bit integer so that
#: JavaScript clients and Redis's Lua (doubles) represent them exactly.
MAX_INT = 2**53 - 1

Audience = Literal["viewer", "host"]
AUDIENCES: tuple[Audience, ...] = ("viewer", "host")


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses; documented in docs/protocol.md."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    BAD_FRAME = 4400
    TOKEN_EXPIRED = 4401
    FORBIDDEN = 4403
    UNKNOWN_ROOM = 4404
    SLOW_CLIENT = 4408
    TOO_MANY_MESSAGES = 4429


def valid_room(room: str) -> bool:
    return _ROOM_RE.fullmatch(room) is not None


def stock_key(room: str) -> str:
    """Hash of SKU -> msgpack record.  The ``{room}`` hash tag keeps a room's
    key and channel in one Redis Cluster slot, so the publish script works
    unchanged on a cluster."""
    return f"stockwire:{{{room}}}:stock"


def epoch_key(room: str) -> str:
    """The room's data epoch: set once when the room's stock is first written.

    A new epoch means the stored versions started over (Redis lost its data);
    within one epoch versions only move forward.
    """
    return f"stockwire:{{{room}}}:epoch"


def viewers_key(room: str) -> str:
    """Hash of gateway node -> "count:expires_ms": the room's viewers across nodes."""
    return f"stockwire:{{{room}}}:viewers"


def channel(room: str) -> str:
    return f"stockwire:{{{room}}}:updates"


def room_of_channel(name: str | bytes) -> str | None:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if name.startswith("stockwire:{") and name.endswith("}:updates"):
        return name[len("stockwire:{") : -len("}:updates")]
    return None


@dataclass(slots=True, frozen=True)
class Stored:
    """A room as read from the broker in one consistent step."""

    epoch: str
    records: list[bytes]


class BadMessage(ValueError):
    """A publisher message or client frame that breaks the contract.

    ``reason`` is a short, stable label used as a metric label and in logs.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True, frozen=True)
class StockRecord:
    """One SKU's full state, exactly as stored in Redis and published.

    Every message carries the whole state of its SKU, never a delta, so a
    receiver that skipped messages is still correct after the next one.
    """

    sku: str
    qty: int
    ver: int
    ts: int
    name: str | None = None
    initial: int | None = None
    platforms: dict[str, int] | None = None
    reserve: int | None = None
    safety: float | None = None
    batches: list[dict[str, int]] | None = None
    #: The room's data epoch when the record was written; lets a receiver tell
    #: "older" from "Redis started over" without waiting for a reconnect.
    ep: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sku": self.sku, "qty": self.qty, "ver": self.ver, "ts": self.ts}
        for key in ("name", "initial", "platforms", "reserve", "safety", "batches", "ep"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def encode_record(record: StockRecord) -> bytes:
    return msgpack.packb(record.to_wire())


def _count(value: object, field: str) -> int:
    # bool is an int subclass; a True quantity is a publisher bug, not 1.
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise BadMessage("bad_field", f"{field} must be an integer in 0..2^53-1")
    return value


def _optional_count(raw: dict[Any, Any], field: str) -> int | None:
    value = raw.get(field)
    return None if value is None else _count(value, field)


def _platforms(value: object) -> dict[str, int] | None:
    if value is None:
        return None
    # Redis's Lua msgpack encodes an empty table as an empty array.
    if value == []:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_PLATFORMS:
        raise BadMessage("bad_field", f"platforms must be a map of at most {MAX_PLATFORMS}")
    out: dict[str, int] = {}
    for name, qty in value.items():
        if not isinstance(name, str) or _PLATFORM_RE.fullmatch(name) is None:
            raise BadMessage("bad_field", "platform names must match " + PLATFORM_PATTERN)
        out[name] = _count(qty, f"platforms.{name}")
    return out


def _batches(value: object) -> list[dict[str, int]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_BATCHES:
        raise BadMessage("bad_field", f"batches must be a list of at most {MAX_BATCHES}")
    out = []
    for batch in value:
        if not isinstance(batch, dict) or set(batch) != {"at", "qty"}:
            raise BadMessage("bad_field", "each batch is a map with exactly at and qty")
        out.append({"at": _count(batch["at"], "batches.at"), "qty": _count(batch["qty"], "batches.qty")})
    return out


def _safety(value: object) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not 0.0 <= float(value) < 1.0:  # type: ignore[arg-type]
        raise BadMessage("bad_field", "safety must be a number in [0, 1)")
    return float(value)  # type: ignore[arg-type]


def _epoch(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or _EPOCH_RE.fullmatch(value) is None:
        raise BadMessage("bad_field", "ep must be a string matching " + EPOCH_PATTERN)
    return value


def decode_record(payload: bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> StockRecord:
    """Validate one publisher message.  Raises :class:`BadMessage`, never anything else."""
    if len(payload) > max_bytes:
        raise BadMessage("oversized", f"{len(payload)} bytes > {max_bytes}")
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage input
        raise BadMessage("undecodable", type(exc).__name__) from None
    if not isinstance(raw, dict):
        raise BadMessage("not_a_map")
    for field in ("sku", "qty", "ver", "ts"):
        if field not in raw:
            raise BadMessage("missing_field", field)
    sku = raw["sku"]
    if not isinstance(sku, str) or _SKU_RE.fullmatch(sku) is None:
        raise BadMessage("bad_field", "sku must be a string matching " + SKU_PATTERN)
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
        raise BadMessage("bad_field", f"name must be a string of at most {MAX_NAME_CHARS}")
    ver = _count(raw["ver"], "ver")
    if ver == 0:
        raise BadMessage("bad_field", "ver starts at 1")
    return StockRecord(
        sku=sku,
        qty=_count(raw["qty"], "qty"),
        ver=ver,
        ts=_count(raw["ts"], "ts"),
        name=name,
        initial=_optional_count(raw, "initial"),
        platforms=_platforms(raw.get("platforms")),
        reserve=_optional_count(raw, "reserve"),
        safety=_safety(raw.get("safety")),
        batches=_batches(raw.get("batches")),
        ep=_epoch(raw.get("ep")),
    )


# -- gateway -> client frames ------------------------------------------------


def encode_frame(kind: Literal["snapshot", "update"], room: str, seq: int, ts: int,
                 items: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
    """``extra`` adds frame-level keys, e.g. the snapshot's ``epoch``."""
    frame: dict[str, Any] = {"t": kind, "room": room, "seq": seq, "ts": ts, "items": items}
    if extra:
        frame.update(extra)
    return msgpack.packb(frame)


def ws_binary_frame(payload: bytes) -> bytes:
    """A complete, unmasked RFC 6455 binary frame (server to client).

    Built once per room and audience per flush and written unchanged to every
    client, so fan-out costs one buffer append per client and no per-client
    encoding.  Compression is off on the gateway, so no extension alters it.
    """
    n = len(payload)
    if n < 126:
        header = bytes((0x82, n))
    elif n < 65536:
        header = bytes((0x82, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x82, 127)) + n.to_bytes(8, "big")
    return header + payload


# -- client -> gateway frames ------------------------------------------------

#: Largest frame a client may send: room for a token renewal, little else.
MAX_CLIENT_FRAME = 4096
CLIENT_MESSAGE_TYPES = frozenset({"resync", "ping", "auth"})


@dataclass(slots=True, frozen=True)
class ClientMessage:
    kind: str
    id: int | None = None
    token: str | None = None


def decode_client_frame(data: bytes | str) -> ClientMessage:
    """Parse a client's frame; raises :class:`BadMessage` on anything unexpected."""
    if isinstance(data, str):
        raise BadMessage("text_frame", "client frames are binary msgpack")
    if len(data) > MAX_CLIENT_FRAME:
        raise BadMessage("oversized", f"{len(data)} bytes > {MAX_CLIENT_FRAME}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise BadMessage("undecodable", type(exc).__name__) from None
    kind = raw.get("t") if isinstance(raw, dict) else None
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGE_TYPES:
        raise BadMessage("unknown_type", "expected a map with t in " + str(sorted(CLIENT_MESSAGE_TYPES)))
    ident = raw.get("id")
    if ident is not None and (type(ident) is not int or not 0 <= ident <= MAX_INT):
        raise BadMessage("bad_field", "id must be a non-negative integer")
    token = raw.get("token")
    if kind == "auth" and not isinstance(token, str):
        raise BadMessage("bad_field", "auth needs a token string")
    return ClientMessage(kind=kind, id=ident, token=token if kind == "auth" else None)
