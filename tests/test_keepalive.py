"""The keepalive schedule, driven by hand: no sockets, no clock."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from gateway.keepalive import Keepalive


@dataclass(eq=False)
class Peer:
    name: str
    last_rx: float = 0.0
    pinged_at: float = 0.0


def turn(wheel: Keepalive[Peer], start: float) -> tuple[list[Peer], list[Peer]]:
    """One whole interval of ticks from ``start``."""
    pinged: list[Peer] = []
    dead: list[Peer] = []
    for i in range(round(wheel.interval / wheel.tick)):
        p, d = wheel.due(start + i * wheel.tick)
        pinged += p
        dead += d
    return pinged, dead


def test_a_join_burst_is_pinged_at_a_steady_rate_not_in_a_burst() -> None:
    wheel: Keepalive[Peer] = Keepalive(interval=20.0, tick=0.1)
    peers = [Peer(str(i)) for i in range(5000)]  # all joined in the same instant
    for peer in peers:
        wheel.add(peer)
    per_tick = [len(wheel.due(1.0 + i * wheel.tick)[0]) for i in range(200)]
    assert set(per_tick) == {25}  # 5,000 / 200 ticks
    assert all(p.pinged_at >= 1.0 for p in peers)
    assert len(wheel) == 5000


def test_every_connection_is_pinged_once_per_interval() -> None:
    wheel: Keepalive[Peer] = Keepalive(interval=2.0, tick=0.1)
    peers = [Peer(str(i)) for i in range(37)]
    for peer in peers:
        wheel.add(peer)
    pinged, dead = turn(wheel, 1.0)
    assert dead == []
    assert Counter(p.name for p in pinged) == {p.name: 1 for p in peers}


def test_silence_for_a_whole_interval_after_a_ping_is_death() -> None:
    wheel: Keepalive[Peer] = Keepalive(interval=1.0, tick=0.25)
    alive, silent = Peer("alive", last_rx=0.5), Peer("silent", last_rx=0.5)
    wheel.add(alive)
    wheel.add(silent)
    pinged, dead = turn(wheel, 1.0)
    assert {p.name for p in pinged} == {"alive", "silent"}
    assert dead == []
    alive.last_rx = alive.pinged_at + 0.01  # its pong
    pinged, dead = turn(wheel, 2.0)
    assert [p.name for p in pinged] == ["alive"]
    assert [p.name for p in dead] == ["silent"]
    assert len(wheel) == 1  # the dead one is no longer scheduled
    pinged, dead = turn(wheel, 3.0)
    assert dead == [alive]  # it did not answer the second ping


def test_any_data_counts_as_an_answer_and_the_first_ping_never_kills() -> None:
    wheel: Keepalive[Peer] = Keepalive(interval=1.0, tick=0.5)
    quiet = Peer("quiet", last_rx=0.0)  # nothing since the handshake
    wheel.add(quiet)
    assert turn(wheel, 5.0) == ([quiet], [])
    quiet.last_rx = 5.7  # a resync, not a pong: still alive
    assert turn(wheel, 6.0) == ([quiet], [])


def test_removed_connections_are_not_pinged_and_adding_twice_is_harmless() -> None:
    wheel: Keepalive[Peer] = Keepalive(interval=1.0, tick=0.5)
    a, b = Peer("a"), Peer("b")
    wheel.add(a)
    wheel.add(a)
    wheel.add(b)
    wheel.remove(a)
    wheel.remove(a)
    assert turn(wheel, 1.0) == ([b], [])
    assert len(wheel) == 1


def test_the_tick_divides_the_interval() -> None:
    wheel: Keepalive[Peer] = Keepalive(interval=1.0, tick=0.3)
    assert wheel.tick == pytest.approx(1.0 / 3)
    assert Keepalive(interval=0.05, tick=0.1).tick == 0.05
    with pytest.raises(ValueError, match="positive"):
        Keepalive(interval=0)
