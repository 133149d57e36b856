"""What the host needs to pace the sale: sales velocity and time to sell-out.

Derived numbers, not state: they change with the clock even when no record
arrives, so the hub sends them to hosts in a periodic ``stats`` frame rather
than in versioned items.  All maths here takes the time as an argument.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from gateway.protocol import StockRecord

#: Velocity is measured over the last minute, in one-second buckets, so memory
#: per SKU is bounded however many orders arrive.
WINDOW_MS = 60_000
BUCKET_MS = 1_000
#: Before a SKU has sold for this long, velocity is averaged over this span so
#: that the first order does not read as thousands per minute.
MIN_SPAN_MS = 10_000


class SalesWindow:
    def __init__(self, window_ms: int = WINDOW_MS, bucket_ms: int = BUCKET_MS) -> None:
        self.window_ms = window_ms
        self.bucket_ms = bucket_ms
        self.buckets: deque[list[int]] = deque()  # [bucket start ms, units]
        self.first_ms: int | None = None

    def add(self, ts_ms: int, units: int) -> None:
        if units <= 0:
            return
        start = ts_ms - ts_ms % self.bucket_ms
        if self.first_ms is None:
            self.first_ms = ts_ms
        if self.buckets and self.buckets[-1][0] >= start:
            self.buckets[-1][1] += units  # same second, or a late timestamp
        else:
            self.buckets.append([start, units])
        self._prune(ts_ms)

    def _prune(self, now_ms: int) -> None:
        horizon = now_ms - self.window_ms
        while self.buckets and self.buckets[0][0] + self.bucket_ms <= horizon:
            self.buckets.popleft()

    def per_minute(self, now_ms: int) -> float:
        self._prune(now_ms)
        if not self.buckets or self.first_ms is None:
            return 0.0
        units = sum(b[1] for b in self.buckets)
        span = min(self.window_ms, max(MIN_SPAN_MS, now_ms - self.first_ms))
        return units * 60_000 / span


def eta_seconds(qty: int, per_minute: float) -> int | None:
    """Seconds until sell-out at the current pace; None when not selling."""
    if qty <= 0 or per_minute <= 0:
        return None
    return round(qty * 60 / per_minute)


def next_batch(record: StockRecord, now_ms: int) -> dict[str, int] | None:
    upcoming = [b for b in record.batches or () if b["at"] > now_ms]
    return min(upcoming, key=lambda b: b["at"]) if upcoming else None


def sku_stats(record: StockRecord, window: SalesWindow | None, now_ms: int) -> dict[str, Any]:
    vel = window.per_minute(now_ms) if window is not None else 0.0
    out: dict[str, Any] = {"vel": round(vel, 1)}
    eta = eta_seconds(record.qty, vel)
    if eta is not None:
        out["eta"] = eta
    batch = next_batch(record, now_ms)
    if batch is not None:
        out["next_batch"] = batch
    return out
