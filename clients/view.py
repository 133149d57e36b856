"""One room's state on the client side, with no I/O.

:class:`RoomView` applies decoded gateway frames by the rules of
``docs/protocol.md``: a snapshot replaces everything, update items apply only
when their version is newer, and a sequence gap asks for a resync.  Every rule
is a plain call, so it is tested without sockets or clocks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of the gateway's ``ts`` fields."""
    return time.time_ns() // 1_000_000


_clock = now_ms  # RoomView.apply's ``now_ms`` argument shadows the function


# -- events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The room's whole state was replaced (first connect, reconnect, resync)."""

    room: str
    seq: int
    ts: int
    items: list[dict[str, Any]]
    received_ms: int


@dataclass(frozen=True, slots=True)
class Update:
    """Items that an update frame actually changed (stale ones are left out).

    ``latencies_ms`` maps each applied SKU to ``received_ms - item["ts"]``: the
    publish-to-receive delay, valid when both clocks agree.  ``gap`` is true
    when frames were missed before this one; a resync has been requested.
    """

    room: str
    seq: int
    ts: int
    items: list[dict[str, Any]]
    received_ms: int
    latencies_ms: dict[str, int] = field(default_factory=dict)
    gap: bool = False
    stale: int = 0


Event = Snapshot | Update


# -- the I/O-free view -----------------------------------------------------------


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass but never a valid count


def _valid_item(item: object) -> bool:
    return isinstance(item, dict) and isinstance(item.get("sku"), str) and _is_int(item.get("ver"))


#: Keys a viewer snapshot adds and viewer updates leave out to stay small
#: (docs/protocol.md §6).  An update is otherwise the SKU's whole state, so
#: only these are carried over from the held item.  Host items always repeat
#: them, and a publisher can rename a product but never unname it, so a
#: carried-over value is never one the publisher removed.
SNAPSHOT_FIELDS = ("name",)


def _with_snapshot_fields(item: dict[str, Any], held: dict[str, Any] | None) -> dict[str, Any]:
    if held is None:
        return item
    missing = {k: held[k] for k in SNAPSHOT_FIELDS if k not in item and k in held}
    return {**item, **missing} if missing else item


class RoomView:
    """One room's state, built only from the frames given to :meth:`apply`.

    Items are stored as received, unknown keys included, so fields a newer
    gateway adds reach the application without a client release.  The one
    exception: a viewer update keeps the ``name`` its snapshot gave, since
    updates leave it out (:data:`SNAPSHOT_FIELDS`).
    """

    def __init__(self, room: str) -> None:
        self.room = room
        self.items: dict[str, dict[str, Any]] = {}
        #: Sequence of the last accepted frame; None until a snapshot arrives
        #: (and again after :meth:`expect_snapshot`), since updates without a
        #: snapshot have nothing to be checked against.
        self.seq: int | None = None
        self.ts: int | None = None
        #: The data epoch of the last snapshot (see docs/protocol.md §6).
        self.epoch: str | None = None
        #: The latest ``stats`` frame (hosts only): velocity, ETA, viewers.
        self.stats: Mapping[str, Any] | None = None
        self.snapshots = self.gaps = self.stale_frames = self.ignored_frames = 0
        self.stale_items = self.malformed_items = 0
        self._resync_due = False
        self._resync_requested = False

    @property
    def synced(self) -> bool:
        return self.seq is not None

    def status(self, sku: str) -> str | None:
        """The viewer-level status (``ok``/``low``/``out``) of a SKU, if known."""
        item = self.items.get(sku)
        return None if item is None else item.get("st")

    def alert(self, sku: str) -> str | None:
        """The host alert tier, falling back to the viewer status for viewers."""
        item = self.items.get(sku)
        return None if item is None else item.get("alert", item.get("st"))

    def expect_snapshot(self) -> None:
        """A new connection starts; its snapshot, not the old sequence, is the base."""
        self.seq = None
        self._resync_due = False
        self._resync_requested = False

    def take_resync(self) -> bool:
        """True once per gap episode: the caller should send ``{"t": "resync"}``.

        Further gaps before the snapshot arrives do not ask again; the one
        snapshot covers them all.
        """
        due = self._resync_due
        self._resync_due = False
        if due:
            self._resync_requested = True
        return due

    def apply(self, frame: object, *, now_ms: int | None = None) -> Event | None:
        """Apply one decoded frame; returns the resulting event, or None when the
        frame changed nothing (unknown type, stale sequence, all items stale)."""
        if not isinstance(frame, Mapping):
            self.ignored_frames += 1
            return None
        kind = frame.get("t")
        if kind == "stats":
            if frame.get("room", self.room) == self.room:
                self.stats = frame
            return None
        if kind not in ("snapshot", "update"):
            if kind != "pong":  # pongs answer pings; nothing to apply
                self.ignored_frames += 1
            return None
        seq, ts, items = frame.get("seq"), frame.get("ts"), frame.get("items")
        room = frame.get("room", self.room)
        if not _is_int(seq) or not _is_int(ts) or not isinstance(items, list) or room != self.room:
            self.ignored_frames += 1
            return None
        received = now_ms if now_ms is not None else _clock()
        if kind == "snapshot":
            epoch = frame.get("epoch")
            return self._snapshot(seq, ts, items, received, epoch if isinstance(epoch, str) else None)
        return self._update(seq, ts, items, received)

    def _snapshot(self, seq: int, ts: int, items: list[Any], received: int,
                  epoch: str | None) -> Snapshot:
        # Same epoch: a SKU keeps whichever record is newer, so reconnecting
        # to a node that is a few messages behind never shows an older state.
        # New (or unknown) epoch: the stored versions started over, so the
        # snapshot replaces everything, and SKUs missing from it are gone.
        previous = dict(self.items) if epoch is not None and epoch == self.epoch else {}
        self.epoch = epoch
        fresh: dict[str, dict[str, Any]] = {}
        for item in items:
            if not _valid_item(item):
                self.malformed_items += 1
                continue
            current = fresh.get(item["sku"]) or previous.get(item["sku"])
            if current is None or item["ver"] > current["ver"]:
                fresh[item["sku"]] = item
            else:
                fresh[item["sku"]] = current
        self.items.clear()  # in place, so references handed out stay live
        self.items.update(fresh)
        self.seq, self.ts = seq, ts
        self.snapshots += 1
        self._resync_due = self._resync_requested = False
        return Snapshot(self.room, seq, ts, list(fresh.values()), received)

    def _update(self, seq: int, ts: int, items: list[Any], received: int) -> Update | None:
        if self.seq is None or seq <= self.seq:
            self.stale_frames += 1
            return None
        gap = seq > self.seq + 1
        if gap:
            self.gaps += 1
            if not self._resync_requested:
                self._resync_due = True
        self.seq, self.ts = seq, ts
        applied: list[dict[str, Any]] = []
        latencies: dict[str, int] = {}
        stale = 0
        for item in items:
            if not _valid_item(item):
                self.malformed_items += 1
                continue
            sku = item["sku"]
            current = self.items.get(sku)
            if current is not None and item["ver"] <= current["ver"]:
                stale += 1
                continue
            item = _with_snapshot_fields(item, current)
            self.items[sku] = item  # the SKU's full state, not a delta
            applied.append(item)
            if _is_int(item.get("ts")):
                latencies[sku] = received - item["ts"]
        self.stale_items += stale
        if not applied and not gap:
            return None
        return Update(self.room, seq, ts, applied, received, latencies, gap, stale)
