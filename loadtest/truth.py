"""Redis's true state of a room, and how a screen's state differs from it.

The rehearsal's last word: once stock stops changing and the gateway has had
a moment to flush, every screen must show exactly what Redis stores — the
same SKUs at the same versions and quantities (and, for hosts, the same
reserve and platform split).  A screen that missed the final frame fails here
even if every frame it did get was fine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from clients.view import RoomView
from gateway.protocol import epoch_key, stock_key

#: Record fields a host item must mirror, beyond qty and ver (when the record has them).
HOST_FIELDS = ("reserve", "platforms", "initial", "name")


class RedisReader(Protocol):
    def get(self, name: str) -> Any: ...

    def hgetall(self, name: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Truth:
    epoch: str
    records: dict[str, dict[str, Any]]


def read_truth(client: RedisReader, room: str) -> Truth:
    """The room's epoch and decoded records, as a joining screen would be sent them."""
    epoch = client.get(epoch_key(room))
    raw = client.hgetall(stock_key(room))
    records = {_text(sku): msgpack.unpackb(value) for sku, value in raw.items()}
    return Truth(_text(epoch) if epoch is not None else "", records)


def differences(view: RoomView, truth: Truth, *, host: bool, limit: int = 5) -> list[str]:
    """What the view gets wrong, at most ``limit`` lines; empty when it matches."""
    if not view.synced:
        return ["no snapshot: the screen is not showing the room"]
    out: list[str] = []
    if view.epoch is not None and view.epoch != truth.epoch:
        out.append(f"epoch {view.epoch!r}, Redis has {truth.epoch!r}")
    for sku in sorted(truth.records.keys() - view.items.keys()):
        out.append(f"{sku}: missing (Redis: qty {truth.records[sku].get('qty')})")
    for sku in sorted(view.items.keys() - truth.records.keys()):
        out.append(f"{sku}: shown but not in Redis")
    for sku in sorted(view.items.keys() & truth.records.keys()):
        shown, stored = view.items[sku], truth.records[sku]
        if (shown.get("ver"), shown.get("qty")) != (stored.get("ver"), stored.get("qty")):
            out.append(f"{sku}: ver {shown.get('ver')} qty {shown.get('qty')}, "
                       f"Redis has ver {stored.get('ver')} qty {stored.get('qty')}")
            continue
        if host:
            for name in HOST_FIELDS:
                if name in stored and _normal(shown.get(name)) != _normal(stored[name]):
                    out.append(f"{sku}: {name} {shown.get(name)!r}, Redis has {stored[name]!r}")
    return out[:limit]


def _normal(value: Any) -> Any:
    # msgpack from Lua writes an empty map as an empty array (docs/protocol.md §3).
    if value == [] or value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
