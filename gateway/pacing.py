"""When a room's next frame is due.  Pure arithmetic on a clock you pass in.

The rule: after a quiet spell an update goes out at once (leading edge); during
a burst, updates wait for the end of the current interval and leave together
(trailing edge), so a room sends at most one frame per interval.  Urgent
transitions (sold out, back in stock, a safety-line crossing) go out at once.
"""

from __future__ import annotations

import math


class Pacer:
    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError("interval must be >= 0")
        self.interval = interval
        self.last_flush = -math.inf
        self.deadline: float | None = None

    def on_change(self, now: float, *, urgent: bool = False) -> float | None:
        """Record a pending change; return when to flush.

        Returns ``now`` when the caller should flush immediately, a later time
        when a flush must be scheduled, or ``None`` when one is already
        scheduled and will carry this change too.
        """
        if urgent or now - self.last_flush >= self.interval:
            return now
        if self.deadline is None:
            self.deadline = self.last_flush + self.interval
            return self.deadline
        return None

    def flushed(self, now: float) -> None:
        self.last_flush = now
        self.deadline = None
