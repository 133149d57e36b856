"""Keepalive pings at a steady rate, whatever the join pattern.

Why not the websockets library's own keepalive: it pings each connection
``ping_interval`` after that connection opened.  A flash-sale announcement
brings the audience in within a few seconds, so the whole audience is pinged
within the same few seconds, every interval, for the rest of the stream: a
burst of thousands of pings and pongs that lands between fan-out flushes as
latency.  It also keeps one task per connection.

Here connections are dealt round-robin into ``interval / tick`` slots and one
slot is visited per tick, so pings leave at a steady ``connections /
interval`` per second however the audience arrived.  A connection that has
sent nothing at all since its previous ping (a whole interval ago; a pong is
enough) is dead: the network under it went away without a FIN, as mobile
networks do.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Pingable(Protocol):
    #: When data last arrived from the peer (the event loop's clock).
    @property
    def last_rx(self) -> float: ...

    #: When the keepalive last pinged it; 0.0 before the first ping.
    pinged_at: float


P = TypeVar("P", bound=Pingable)


class Keepalive(Generic[P]):
    """The ping schedule; :meth:`due` says whom to ping and whom to drop at each tick."""

    def __init__(self, interval: float, tick: float = 0.1) -> None:
        if interval <= 0 or tick <= 0:
            raise ValueError("interval and tick must be positive")
        count = max(1, round(interval / tick))
        self.interval = interval
        #: Seconds between calls to :meth:`due` that make one turn take ``interval``.
        self.tick = interval / count
        self._slots: list[set[P]] = [set() for _ in range(count)]
        self._slot_of: dict[P, int] = {}
        self._deal = 0
        self._cursor = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, conn: P) -> None:
        if conn in self._slot_of:
            return
        # Round-robin, not by arrival time: a join burst spreads over every slot.
        slot = self._deal
        self._deal = (self._deal + 1) % len(self._slots)
        self._slots[slot].add(conn)
        self._slot_of[conn] = slot

    def remove(self, conn: P) -> None:
        slot = self._slot_of.pop(conn, None)
        if slot is not None:
            self._slots[slot].discard(conn)

    def due(self, now: float) -> tuple[list[P], list[P]]:
        """Visit the next slot: ``(ping, dead)``.  Connections to ping are stamped ``now``."""
        slot = self._slots[self._cursor]
        self._cursor = (self._cursor + 1) % len(self._slots)
        ping: list[P] = []
        dead: list[P] = []
        for conn in slot:
            if conn.pinged_at and conn.last_rx < conn.pinged_at:
                dead.append(conn)
            else:
                conn.pinged_at = now
                ping.append(conn)
        for conn in dead:
            self.remove(conn)
        return ping, dead
