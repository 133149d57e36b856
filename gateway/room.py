"""A room's stock state: version checks, merging, and per-audience views.

No I/O and no clock: the hub feeds records in and takes merged changes out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import Enum
from typing import Any

from gateway.alerts import Level, Thresholds, level, status
from gateway.insights import SalesWindow, sku_stats
from gateway.protocol import Audience, StockRecord


class Outcome(Enum):
    STALE = "stale"  # older or equal version: discarded
    MERGED = "merged"  # newer version, same alert tier: may wait for the interval
    URGENT = "urgent"  # newer version that changes the tier (or a new SKU): flush now


class Epoch(Enum):
    """How a record's ``ep`` relates to the room's epoch."""

    CURRENT = "current"  # the room's epoch, or no ``ep`` at all: the version rule decides
    PAST = "past"  # an epoch a reload showed to be over: the record predates the data
    UNKNOWN = "unknown"  # neither: Redis may have started over, so read the room again


#: Past epochs remembered per room, so late records of an old epoch are
#: recognised without another reload.
PAST_EPOCHS = 8


class Held:
    """Records that arrive while a room's snapshot is read: the newest per SKU.

    Within an epoch the higher version wins, so keeping one record per SKU is
    exact: memory is bounded by the room's SKUs, not by the burst.  Across
    epochs the later arrival wins (arrival order is publish order) and
    ``mixed`` is set: the read may predate the change, so read again.
    """

    __slots__ = ("mixed", "records")

    def __init__(self) -> None:
        self.records: dict[str, StockRecord] = {}
        self.mixed = False

    def add(self, record: StockRecord) -> bool:
        """Keep ``record``; False (and nothing kept) if it is not newer than the held one."""
        kept = self.records.get(record.sku)
        if kept is not None:
            if record.ep is not None and kept.ep is not None and record.ep != kept.ep:
                self.mixed = True
            elif record.ver <= kept.ver:
                return False
        self.records[record.sku] = record
        return True


class RoomState:
    """The latest known record per SKU, plus what changed since the last frame.

    ``pending`` keeps only the newest record per SKU, so a burst of a thousand
    updates to one product leaves one entry: merging may skip intermediate
    values but never the last one.
    """

    def __init__(self, name: str, thresholds: Thresholds | None = None) -> None:
        self.name = name
        self.thresholds = thresholds or Thresholds()
        self.items: dict[str, StockRecord] = {}
        self.levels: dict[str, Level] = {}
        self.pending: dict[str, StockRecord] = {}
        self.sales: dict[str, SalesWindow] = {}
        self.seq = 0
        self.epoch: str | None = None
        self.past_epochs: deque[str] = deque(maxlen=PAST_EPOCHS)

    def judge(self, epoch: str | None) -> Epoch:
        """Versions compare only within one epoch; this says whether they may."""
        if epoch is None or epoch == self.epoch:
            return Epoch.CURRENT
        if epoch in self.past_epochs:
            return Epoch.PAST
        return Epoch.UNKNOWN

    def retire(self, epoch: str) -> None:
        """A reload read another epoch after ``epoch`` was seen: ``epoch`` is over."""
        if epoch and epoch != self.epoch and epoch not in self.past_epochs:
            self.past_epochs.append(epoch)

    def apply(self, record: StockRecord) -> Outcome:
        current = self.items.get(record.sku)
        if current is not None and record.ver <= current.ver:
            return Outcome.STALE
        new_level = level(record, self.thresholds)
        old_level = self.levels.get(record.sku)
        if current is not None and record.qty < current.qty:
            window = self.sales.get(record.sku)
            if window is None:
                window = self.sales[record.sku] = SalesWindow()
            window.add(record.ts, current.qty - record.qty)
        self.items[record.sku] = record
        self.levels[record.sku] = new_level
        self.pending[record.sku] = record
        return Outcome.MERGED if old_level == new_level else Outcome.URGENT

    def replace(self, records: Iterable[StockRecord], epoch: str) -> None:
        """Adopt a snapshot read from the broker.

        Within the same epoch a SKU keeps whichever record is newer, ours or
        the snapshot's, so a reload never shows an older state.  A different
        epoch means Redis lost its data and was re-seeded: versions started
        over, Redis is the truth and our memory is not, so the snapshot
        replaces everything.  The sequence moves on so clients see a new
        snapshot, not a gap.
        """
        previous = self.items if epoch == self.epoch else {}
        old, self.epoch = self.epoch, epoch
        if old is not None:
            self.retire(old)
        if epoch in self.past_epochs:
            self.past_epochs.remove(epoch)
        self.items = {}
        for record in records:
            current = self.items.get(record.sku) or previous.get(record.sku)
            if current is None or record.ver > current.ver:
                self.items[record.sku] = record
            else:
                self.items[record.sku] = current
        self.levels = {sku: level(rec, self.thresholds) for sku, rec in self.items.items()}
        self.sales = {sku: w for sku, w in self.sales.items() if sku in self.items}
        self.pending.clear()
        self.seq += 1

    def adopt(self, records: Iterable[StockRecord], epoch: str, held: Held,
              seen: Iterable[str] = ()) -> tuple[set[str], int]:
        """Adopt a snapshot, then the records ``held`` while it was read.

        ``seen`` are epochs on records that arrived before the read: one the
        read does not show is over.  Held records of the snapshot's epoch
        apply by the version rule, those of a past epoch are discarded.
        Returns the epochs the read cannot explain (records published after
        it, perhaps after Redis started over: read again) and the number of
        held records discarded.
        """
        self.replace(records, epoch)
        for old in seen:
            self.retire(old)
        unexplained: set[str] = set()
        discarded = 0
        for record in held.records.values():
            verdict = self.judge(record.ep)
            if verdict is Epoch.UNKNOWN:
                unexplained.add(record.ep)  # type: ignore[arg-type]
            elif verdict is Epoch.PAST or self.apply(record) is Outcome.STALE:
                discarded += 1
        self.pending.clear()  # a snapshot carries it all
        return unexplained, discarded

    def take_pending(self) -> list[StockRecord]:
        """The merged changes for the next frame; advances the sequence if any."""
        if not self.pending:
            return []
        changes = list(self.pending.values())
        self.pending.clear()
        self.seq += 1
        return changes

    def view(self, records: Iterable[StockRecord], audience: Audience) -> list[dict[str, Any]]:
        levels = self.levels
        if audience == "viewer":
            return [
                {"sku": r.sku, "qty": r.qty, "st": status(levels[r.sku]), "ver": r.ver, "ts": r.ts}
                for r in records
            ]
        items = []
        default_safety = self.thresholds.safety
        for r in records:
            item = r.to_wire()
            item.pop("ep", None)  # the snapshot's epoch says it once per frame
            item["st"] = status(levels[r.sku])
            item["alert"] = levels[r.sku]
            if r.safety is None:
                item["safety"] = default_safety  # the line the alert was computed against
            items.append(item)
        return items

    def snapshot_view(self, audience: Audience) -> list[dict[str, Any]]:
        items = self.view(self.items.values(), audience)
        if audience == "viewer":
            # Names once per connection, so badges can be labelled; updates stay minimal.
            for item in items:
                name = self.items[item["sku"]].name
                if name is not None:
                    item["name"] = name
        return items

    def stats(self, now_ms: int) -> dict[str, dict[str, Any]]:
        """Per-SKU pacing numbers for hosts (velocity, time to sell-out, next batch)."""
        return {sku: sku_stats(rec, self.sales.get(sku), now_ms) for sku, rec in self.items.items()}
