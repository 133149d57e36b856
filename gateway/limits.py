"""Rate and count limits, as arithmetic on a clock you pass in."""

from __future__ import annotations

from collections import Counter


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
