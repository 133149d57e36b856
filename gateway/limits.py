"""Rate and count limits, as arithmetic on a clock you pass in."""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def wait_time(self, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (for Retry-After)."""
        return max(0.0, (n - self.tokens) / self.rate) if self.rate > 0 else float("inf")


class AddressBuckets:
    """One :class:`TokenBucket` per client address, in a table of bounded size.

    A bucket that has been idle long enough to refill is the same as a fresh
    one, so it is dropped; the table is kept in least-recently-used order, so
    those sit at the front and pruning costs nothing per handshake.  A flood
    from more addresses than ``max_entries`` evicts the least recently seen
    address, which then starts again from a full burst: the node-wide bucket
    still bounds the total.
    """

    def __init__(self, rate: float, burst: float, max_entries: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self.idle = burst / rate
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self.buckets)

    def take(self, address: str, now: float) -> bool:
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = TokenBucket(self.rate, self.burst, now)
        else:
            self.buckets.move_to_end(address)
        allowed = bucket.take(now)
        self._prune(now)
        return allowed

    def wait_time(self, address: str) -> float:
        bucket = self.buckets.get(address)
        return 0.0 if bucket is None else bucket.wait_time()

    def _prune(self, now: float) -> None:
        buckets = self.buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if len(buckets) <= self.max_entries and now - oldest.stamp < self.idle:
                return
            buckets.popitem(last=False)


def forwarded_client(values: Iterable[str], hops: int) -> str | None:
    """The client address from ``X-Forwarded-For`` header lines, trusting ``hops`` proxies.

    Each proxy appends the address it received the request from, so the
    entries a client wrote come first and the trusted proxies' come last: the
    client's address is the ``hops``-th entry from the right.  Several header
    lines are one list in order (HAProxy adds its own line rather than
    extending the client's).  With fewer entries than ``hops`` every entry was
    written by a proxy, and the leftmost is the furthest one out.
    """
    entries = [e.strip() for value in values for e in value.split(",")]
    entries = [e for e in entries if e]
    if not entries:
        return None
    return entries[max(0, len(entries) - hops)]


class ConnectionCounts:
    """Open connections per client address and in total."""

    def __init__(self, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        self.by_address: Counter[str] = Counter()
        self.count = 0

    def full(self) -> bool:
        return self.count >= self.total

    def address_full(self, address: str) -> bool:
        return self.by_address[address] >= self.per_address

    def add(self, address: str) -> None:
        self.by_address[address] += 1
        self.count += 1

    def remove(self, address: str) -> None:
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]
        self.count -= 1


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Empty ``allowed`` admits every origin; ``https://*.example.com`` matches subdomains.

    Clients that send no Origin (native apps, servers) are not browsers and
    are not subject to the browser origin policy.
    """
    if not allowed or origin is None:
        return True
    for pattern in allowed:
        if pattern == origin:
            return True
        scheme, sep, rest = pattern.partition("://*.")
        if sep and origin.startswith(scheme + "://") and origin.endswith("." + rest):
            return True
    return False
