"""The broker interface: where stock records come from and where operations go.

A broker knows rooms, channels and stored records; it never sees clients or
frames.  The hub hands it a :class:`BrokerHandler` to call, so data flows one
way: broker -> hub -> connections.  Every broker passes the same contract tests
(``tests/brokers/test_contract.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from typing import Protocol

from gateway.protocol import Stored
from gateway.stock import OpResult, StockOp


class BrokerHandler(Protocol):
    def on_message(self, room: str, payload: bytes) -> None:
        """One published record for ``room``; called in arrival order."""

    async def on_resync(self, rooms: Collection[str]) -> None:
        """The broker lost and regained the upstream of ``rooms``; they may be stale.

        Called after those rooms are subscribed again, so a snapshot loaded now
        misses nothing.  A room whose reload fails is retried by the handler
        itself, with backoff; this does not raise for it.
        """

    def on_disconnect(self) -> None:
        """The upstream went away; updates stop until :meth:`on_resync`."""


class Broker(abc.ABC):
    @abc.abstractmethod
    async def start(self, handler: BrokerHandler) -> None:
        """Connect and begin delivering to ``handler``."""

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True while updates are flowing (what ``/readyz`` reports)."""

    @abc.abstractmethod
    async def subscribe(self, room: str) -> None:
        """Return once messages for ``room`` are guaranteed to be delivered."""

    @abc.abstractmethod
    async def unsubscribe(self, room: str) -> None: ...

    @abc.abstractmethod
    async def load(self, room: str) -> Stored:
        """The room's epoch and every stored record, as published (msgpack bytes),
        read in one consistent step.  Raises :class:`BrokerUnavailable` when
        the read fails for any reason; the caller retries."""

    @abc.abstractmethod
    async def report_viewers(self, room: str, node: str, count: int, ttl: float) -> int:
        """Record this node's viewer count for ``room``; return the total over all nodes.

        Entries expire after ``ttl`` seconds, so a dead node's viewers vanish.
        """

    @abc.abstractmethod
    async def execute(self, room: str, op: StockOp) -> OpResult:
        """Change stored stock and publish the new record, atomically.

        The record carries the room's epoch as ``ep``; the first write to a
        room creates the epoch."""


class BrokerUnavailable(ConnectionError):
    """Raised by broker calls while the upstream is unreachable."""
