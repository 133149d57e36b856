"""When a room's next frame is due.  Pure arithmetic on a clock you pass in.

The rule: after a quiet spell an update goes out at once (leading edge); during
a burst, updates wait for the end of the current interval and leave together
(trailing edge), so a room sends at most one frame per interval.  Urgent
transitions (sold out, back in stock, a safety-line crossing) go out at once,
but no sooner than ``urgent_interval`` after the previous frame: stock that
flickers between 0 and 1 at a sell-out would otherwise turn every update into
a frame of its own, exactly when the room is busiest.
"""

from __future__ import annotations

import math


class Pacer:
    def __init__(self, interval: float, urgent_interval: float = 0.0) -> None:
        if interval < 0:
            raise ValueError("interval must be >= 0")
        if urgent_interval < 0:
            raise ValueError("urgent_interval must be >= 0")
        self.interval = interval
        self.urgent_interval = urgent_interval
        self.last_flush = -math.inf
        self.deadline: float | None = None
        #: Multiplies both intervals while the process is behind on reading
        #: (``gateway.throttle``); 1 otherwise.
        self.stretch = 1.0

    def on_change(self, now: float, *, urgent: bool = False) -> float | None:
        """Record a pending change; return when to flush.

        Returns ``now`` when the caller should flush immediately, a later time
        when a flush must be scheduled (replacing any later one scheduled
        before), or ``None`` when one is already scheduled no later than this
        change needs and will carry it too.
        """
        interval = self.interval * self.stretch
        if now - self.last_flush >= interval:
            return now
        due = self.last_flush + interval
        if urgent:
            due = min(due, self.last_flush + self.urgent_interval * self.stretch)
            if due <= now:
                return now
        if self.deadline is not None and self.deadline <= due:
            return None
        self.deadline = due
        return due

    def flushed(self, now: float) -> None:
        self.last_flush = now
        self.deadline = None
