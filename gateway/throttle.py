"""How far to stretch every room's interval when this process falls behind Redis.

A worker spends its core on two things: reading records from Redis and
writing frames to clients.  Frames cost far more, and their number is set by
the interval (one per room per interval under a surge).  When the core cannot
do both, records queue up unread in the socket and in Redis's output buffer,
so every screen falls seconds behind — and the buffer grows until Redis drops
the subscription.  Sending frames less often frees the core to read; each
frame then carries the same latest state (merging never loses the last
value), just fewer times per second.  Falling behind by seconds is worse for a
screen than updating five times a second instead of ten.

"Behind" is judged from the records themselves: how old each is when it
arrives (now - its publish ``ts``).  Clocks of the gateway and Redis may be
skewed, so the measure is the age above the lowest age seen in the last
five minutes, not the age itself.  Within each tick the *lowest* age counts: if even
the freshest record of the last half second was late, reading is behind, while
one late record among fresh ones is noise.

Pure arithmetic on a clock you pass in; the hub feeds it ages and applies the
stretch to its rooms' pacers.
"""

from __future__ import annotations

import math
from collections import deque


class Throttle:
    #: Each step up or down multiplies or divides the stretch by this.
    STEP = 1.5

    def __init__(self, interval: float, max_stretch: float, *, tick: float = 0.5,
                 window: float = 300.0, calm: float = 3.0, catch_up: float = 2.0) -> None:
        if max_stretch < 1:
            raise ValueError("max_stretch must be >= 1")
        #: Lag beyond this is "behind": one interval, but never under 50 ms.
        self.behind = max(interval, 0.05)
        self.max_stretch = max_stretch
        self.tick_every = tick
        self.window = window
        self.calm_for = calm
        self.catch_up = catch_up
        self.stretch = 1.0
        self.lag = 0.0
        self._recent = math.inf
        self._minima: deque[tuple[float, float]] = deque()
        self._last_tick: float | None = None
        self._calm_since: float | None = None

    def observe(self, age: float) -> None:
        """A record arrived ``age`` seconds after it was published."""
        if age < self._recent:
            self._recent = age

    def tick(self, now: float) -> float | None:
        """Judge the last tick's records; return the new stretch if it changed.

        Call as often as you like: it acts once per ``tick`` seconds.
        """
        if self._last_tick is not None and now - self._last_tick < self.tick_every:
            return None
        self._last_tick = now
        recent, self._recent = self._recent, math.inf
        if recent == math.inf:
            # Nothing arrived: nothing to be behind on.
            return self._calm(now)
        minima = self._minima
        while minima and minima[0][0] < now - self.window:
            minima.popleft()
        # Keep the minima increasing from oldest to newest: an older, higher
        # minimum can never again be the window's lowest.
        while minima and minima[-1][1] >= recent:
            minima.pop()
        minima.append((now, recent))
        previous, self.lag = self.lag, recent - minima[0][1]
        if self.lag > self.behind:
            self._calm_since = None
            # Stretch further unless the backlog is draining fast enough to be
            # gone within ``catch_up`` seconds at the rate of the last tick.
            drained = previous - self.lag
            if drained > 0 and self.lag / drained * self.tick_every <= self.catch_up:
                return None
            if self.stretch < self.max_stretch:
                self.stretch = min(self.max_stretch, self.stretch * self.STEP)
                return self.stretch
            return None
        if self.lag > self.behind / 2:
            self._calm_since = None
            return None
        return self._calm(now)

    def _calm(self, now: float) -> float | None:
        if self.stretch == 1.0:
            return None
        if self._calm_since is None:
            self._calm_since = now
            return None
        if now - self._calm_since < self.calm_for:
            return None
        # One step down, then another calm spell before the next.
        self._calm_since = now
        self.stretch = max(1.0, self.stretch / self.STEP)
        return self.stretch
