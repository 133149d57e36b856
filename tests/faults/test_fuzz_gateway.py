"""Fault 6: arbitrary bytes and msgpack structures through a running gateway process.

(a) published on a room's Redis channel: the gateway never crashes, every input
    is either accepted as a record (``stockwire_updates_received_total`` +1) or
    counted in ``stockwire_messages_dropped_total`` under the reason the
    reference decoder gives, and screens keep receiving valid updates;
(b) sent by a client (binary and text frames, ``auth`` renewals included): the
    session is either answered (its valid frames get their reply) or closed with
    a documented code, never 1011 or an abrupt drop, and every close is counted
    once in ``stockwire_client_closes_total`` under the reason matching its code.

The decoders alone are fuzzed in ``tests/test_fuzz.py``; here the whole path
runs (Redis pub/sub, hub, fan-out, websockets) in a ``stockwire serve``
process, judged by its ``/metrics``.  The clients run on an event loop in a
background thread, so that hypothesis drives them from plain synchronous tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from clients.publisher import Publisher
from gateway.protocol import MAX_CLIENT_FRAME, MAX_INT, BadMessage, CloseCode, channel, decode_record
from tests.conftest import RedisServer, token
from tests.faults.conftest import GatewayNode, Samples
from tests.screens import Screen

T = TypeVar("T")
ROOM = "fuzz"
SENTINEL = "~sentinel~"  # a SKU no strategy below produces
EXAMPLES = settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: The counter reason(s) each close code a client may get is counted under
#: (docs/protocol.md §9, docs/security.md).  Never 1011 (internal error) or 1006
#: (dropped without a close).
CLOSE_REASONS: dict[int, set[str]] = {
    CloseCode.BAD_FRAME: {"bad_frame"},
    CloseCode.MESSAGE_TOO_BIG: {"too_big"},
    CloseCode.TOO_MANY_MESSAGES: {"too_many_messages"},
    CloseCode.TOKEN_EXPIRED: {"invalid_token", "expired_token"},  # a renewal that does not do
    CloseCode.FORBIDDEN: {"wrong_room", "wrong_role"},
}
#: All fuzz sessions come from 127.0.0.1, faster than one address may connect.
FLAGS = {"interval": 0.05, "room_grace": 0.5, "max_connections_per_address": 5000,
         "handshake_rate_per_address": 100_000, "handshake_burst_per_address": 100_000}


class LoopThread:
    """An event loop on a background thread; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-clients", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Env:
    loop: LoopThread
    redis: RedisServer
    node: GatewayNode
    publisher: Publisher
    bystanders: list[Screen] = field(default_factory=list)
    sentinel_qty: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    #: Publisher messages the reference decoder rejects, by drop reason.
    dropped: dict[str, int] = field(default_factory=dict)
    #: Client sessions the gateway closed, by the reason they were counted under.
    closed: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> Samples:
        return self.loop.run(self.node.metrics())

    def counted(self, samples: Samples | None = None) -> tuple[float, dict[str, float], dict[str, float]]:
        """(updates received, drops by reason, client closes by reason) from /metrics."""
        m = samples or self.metrics()
        return (m.value("stockwire_updates_received_total"),
                m.by_label("stockwire_messages_dropped_total", "reason"),
                m.by_label("stockwire_client_closes_total", "reason"))

    def note(self, outcome: str, tally: dict[str, int] | None = None, reason: str = "") -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if tally is not None:
            tally[reason] = tally.get(reason, 0) + 1

    def sentinel(self) -> None:
        """Publish the sentinel SKU and wait until every bystander shows it.

        Its quantity alternates between 0 and 1 (a tier change), so it leaves at
        once instead of waiting for the interval.  Messages published before it
        on the same channel have been handled by then.
        """
        self.sentinel_qty = 1 - self.sentinel_qty
        qty = self.sentinel_qty

        async def go() -> None:
            await self.publisher.set(ROOM, SENTINEL, qty)
            for screen in self.bystanders:
                await screen.until(lambda s: s.items.get(SENTINEL, {}).get("qty") == qty, timeout=10)

        self.loop.run(go())

    def check_bystanders(self) -> None:
        for screen in self.bystanders:
            assert screen.close_code is None, (screen.close_code, screen.close_reason)
            assert screen.violations == []


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("fuzz")
    redis = RedisServer(workdir)
    redis.start()
    loop = LoopThread()
    node = GatewayNode(redis.url, workdir, "fuzz", **FLAGS)

    async def start() -> Env:
        await node.start()
        env = Env(loop, redis, node, Publisher(redis.url))
        for url in (f"{node.url}/ws/{ROOM}", f"{node.url}/ws/{ROOM}?role=host&token={token()}"):
            screen = Screen(url)
            await screen.__aenter__()
            await screen.until(lambda s: s.frames)
            env.bystanders.append(screen)
        return env

    async def stop(env: Env) -> None:
        for screen in env.bystanders:
            await screen.__aexit__()
        await env.publisher.close()

    try:
        environment = loop.run(start())
        try:
            yield environment
        finally:
            loop.run(stop(environment))
    finally:
        node.cleanup()
        loop.close()
        redis.stop()


# -- strategies ------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30) | st.binary(max_size=30)
)
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-2, 2), children, max_size=4),
    max_leaves=16,
)
counts = st.integers(0, 5) | st.integers(MAX_INT - 1, MAX_INT + 1) | st.integers(-2, -1) | scalars
optional_fields = {
    "name": st.text(max_size=210) | scalars,
    "initial": counts, "reserve": counts,
    "safety": st.floats(-0.5, 1.5) | scalars,
    "platforms": st.dictionaries(st.text(max_size=6), counts, max_size=3) | st.just([]) | scalars,
    "batches": st.lists(st.fixed_dictionaries({"at": counts, "qty": counts}), max_size=3) | scalars,
    "extra": scalars,
}
#: Near-records: any required key may be missing, any value slightly off.
record_like = st.fixed_dictionaries(
    {"sku": st.sampled_from(["a", "b", "x" * 64, "x" * 65, "{bad}", "", 7]) | st.text(max_size=5)},
    optional={"qty": counts, "ver": counts, "ts": counts, **optional_fields},
)
#: Records the gateway must accept (some stale: versions repeat), heavy ones included.
valid_records = st.fixed_dictionaries(
    {"sku": st.sampled_from(["a", "b", "长" * 64]), "qty": st.integers(0, 10**6),
     "ver": st.integers(1, 50), "ts": st.integers(0, MAX_INT)},
    optional={"name": st.text(max_size=200), "initial": st.integers(0, 10**6),
              "reserve": st.integers(0, 100), "safety": st.floats(0, 0.99),
              "platforms": st.dictionaries(st.from_regex(r"[a-z0-9_-]{1,32}", fullmatch=True),
                                           st.integers(0, 10**6), max_size=16),
              "batches": st.lists(st.fixed_dictionaries({"at": st.integers(0, MAX_INT),
                                                         "qty": st.integers(0, 10**6)}), max_size=32)},
)
publisher_payloads = st.one_of(
    st.binary(max_size=200),
    # Around the 8 KiB record limit: a valid record padded to 8100..8300 bytes.
    st.integers(8100, 8300).map(lambda n: msgpack.packb(
        {"sku": "a", "qty": 1, "ver": 1, "ts": 1, "pad": "x" * (n - 40)})),
    structures.map(msgpack.packb),
    record_like.map(msgpack.packb),
    valid_records.map(msgpack.packb),
)

#: Renewals the gateway must accept on a viewer connection to ROOM (each answered
#: with an ``auth`` frame): an exact room, a prefix, and a host token (hosts may view).
VALID_AUTH_FRAMES = [
    msgpack.packb({"t": "auth", "token": token("viewer", (ROOM,))}),
    msgpack.packb({"t": "auth", "token": token("viewer", ("fu*",))}),
    msgpack.packb({"t": "auth", "token": token("host", (ROOM,)), "id": 7}),
]
VALID_CLIENT_FRAMES = [
    msgpack.packb({"t": "resync"}),
    msgpack.packb({"t": "ping"}),
    msgpack.packb({"t": "ping", "id": MAX_INT}),
    *VALID_AUTH_FRAMES,
]
#: Renewals that must be refused: 4401 (expired, forged, garbage) or 4403 (another room).
BAD_AUTH_FRAMES = [
    msgpack.packb({"t": "auth", "token": token("viewer", (ROOM,), ttl=-60)}),
    msgpack.packb({"t": "auth", "token": token("viewer", ("other-room",))}),
    msgpack.packb({"t": "auth", "token": token("viewer", (ROOM,))[:-4] + "AAAA"}),
    msgpack.packb({"t": "auth", "token": "not.a.jwt"}),
    msgpack.packb({"t": "auth", "token": ""}),
]
client_maps = st.fixed_dictionaries(
    {"t": st.sampled_from(["resync", "ping", "auth", "subscribe", ""]) | scalars},
    optional={"id": counts, "token": st.text(max_size=20) | scalars, "room": scalars},
)
client_frames = st.one_of(
    st.binary(max_size=100),
    # Around the 4096-byte client frame limit (1009 past it).
    st.integers(MAX_CLIENT_FRAME - 8, MAX_CLIENT_FRAME + 64).map(lambda n: b"\x81" * n),
    st.text(max_size=50),
    structures.map(msgpack.packb),
    client_maps.map(msgpack.packb),
    st.sampled_from(VALID_CLIENT_FRAMES + BAD_AUTH_FRAMES),
)
client_sessions = st.one_of(
    st.lists(client_frames, min_size=1, max_size=3),
    st.lists(st.sampled_from(VALID_CLIENT_FRAMES), min_size=1, max_size=4),  # must be answered
    # A flood of valid frames, one past the burst of 10: the message rate limit (4429).
    # (Not more: once the handler stops reading, further frames fill websockets'
    # queue and the close handshake waits out its 2 s timeout, for nothing.)
    st.sampled_from(VALID_CLIENT_FRAMES).map(lambda frame: [frame] * 11),
)


def _valid(payload: bytes) -> str | None:
    """None if the reference decoder accepts ``payload``, else the drop reason."""
    try:
        record = decode_record(payload)
    except BadMessage as exc:
        return exc.reason
    return None if record.sku != SENTINEL else "sentinel"


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {r: v - before.get(r, 0) for r, v in after.items() if v != before.get(r, 0)}


# -- (a) the publisher side --------------------------------------------------------------


@EXAMPLES
@given(payload=publisher_payloads)
def test_arbitrary_channel_messages_are_accepted_or_counted(env: Env, payload: bytes) -> None:
    reason = _valid(payload)
    if reason == "sentinel":
        return
    received, dropped, _ = env.counted()
    env.redis.client().spublish(channel(ROOM), payload)
    env.sentinel()  # proves the gateway handled the payload and still serves
    received_after, dropped_after, _ = env.counted()
    if reason is None:
        assert (received_after - received, grown(dropped, dropped_after)) == (2, {})  # it and the sentinel
    else:
        assert (received_after - received, grown(dropped, dropped_after)) == (1, {reason: 1})
    if reason is None:
        env.note("accepted")
    else:
        env.note(reason, env.dropped, reason)
    env.check_bystanders()


# -- (b) the client side ---------------------------------------------------------------------


@dataclass
class Session:
    code: int | None = None  # the close code received, None when answered
    kinds: list[str] = field(default_factory=list)  # the ``t`` of every frame received after the snapshot


async def client_session(url: str, frames: list[bytes | str]) -> Session:
    """Send ``frames`` then a final ping; read until its pong or the close."""
    marker = 2**40
    session = Session()
    async with connect(url, max_size=None, open_timeout=10) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 10)  # the snapshot
            for frame in frames:
                await ws.send(frame)
            await ws.send(msgpack.packb({"t": "ping", "id": marker}))
            while True:
                data = await asyncio.wait_for(ws.recv(), 10)
                frame = msgpack.unpackb(data) if isinstance(data, bytes) else None
                session.kinds.append(frame.get("t", "?") if isinstance(frame, dict) else "?")
                if isinstance(frame, dict) and frame.get("t") == "pong" and frame.get("id") == marker:
                    return session
        except ConnectionClosed:
            session.code = ws.close_code
            return session
    raise AssertionError("unreachable")  # pragma: no cover


def counted_close(env: Env, before: dict[str, float], expected: int,
                  timeout: float = 5.0) -> dict[str, float]:
    """Client closes counted since ``before``, once ``expected`` of them are (or at the timeout).

    The handler counts most closes before sending them, but a 1009 only once
    websockets' close handshake is over, a little after the client saw it.
    """
    deadline = time.monotonic() + timeout
    while True:
        delta = grown(before, env.counted()[2])
        if sum(delta.values()) >= expected or time.monotonic() > deadline:
            return delta
        time.sleep(0.01)


@EXAMPLES
@given(frames=client_sessions)
def test_arbitrary_client_frames_are_answered_or_closed_and_counted(
    env: Env, frames: list[bytes | str]
) -> None:
    closes = env.counted()[2]
    session = env.loop.run(client_session(f"{env.node.url}/ws/{ROOM}", frames))
    code = session.code
    assert code is None or code in CLOSE_REASONS, f"closed with {code}"
    if all(frame in VALID_CLIENT_FRAMES for frame in frames) and len(frames) < 10:
        assert code is None, "valid frames within the rate limit must be answered"
        # Accepted as valid: every ping got its pong, every renewal its auth frame.
        pings = sum(msgpack.unpackb(f).get("t") == "ping" for f in frames)  # type: ignore[arg-type]
        assert session.kinds.count("pong") == pings + 1
        assert session.kinds.count("auth") == sum(f in VALID_AUTH_FRAMES for f in frames)
    delta = counted_close(env, closes, 0 if code is None else 1)
    if code is None:
        assert delta == {}, f"an answered session was counted as closed: {delta}"
        env.note("answered")
    else:
        # Counted exactly once, under the reason its close code stands for.
        assert sum(delta.values()) == 1, f"close {code} counted as {delta}"
        (reason,) = delta
        env.note(str(code), env.closed, reason)  # counted, so the totals below still add up
        assert reason in CLOSE_REASONS[code], f"close {code} counted as {reason}"
    env.check_bystanders()


def test_oversized_client_frames_are_counted(env: Env) -> None:
    before = env.counted()[2]
    session = env.loop.run(client_session(f"{env.node.url}/ws/{ROOM}", [b"\x81" * 5000]))
    assert session.code == CloseCode.MESSAGE_TOO_BIG
    assert counted_close(env, before, 1) == {"too_big": 1}
    env.note(str(session.code), env.closed, "too_big")


def test_a_close_is_counted_under_the_code_that_was_sent(env: Env) -> None:
    """A bad frame and an oversized one back to back: the close sent decides the reason.

    Both arrive in one read, so websockets may answer the oversized frame with
    1009 before the handler has looked at the bad one (then 4400 is never
    sent).  Either close is right; counting ``bad_frame`` for a 1009 is not.
    """
    for _ in range(20):
        before = env.counted()[2]
        session = env.loop.run(client_session(f"{env.node.url}/ws/{ROOM}", [b"", b"\x81" * 5000]))
        assert session.code in (CloseCode.BAD_FRAME, CloseCode.MESSAGE_TOO_BIG)
        delta = counted_close(env, before, 1)
        assert sum(delta.values()) == 1, f"close {session.code} counted as {delta}"
        (reason,) = delta
        env.note(str(session.code), env.closed, reason)
        assert reason in CLOSE_REASONS[session.code], f"close {session.code} counted as {reason}"


def test_every_rejected_input_was_counted(env: Env) -> None:
    """Runs last in the module: the counters' totals equal the inputs judged rejected.

    Each example above checked its own increment; this also catches a late or
    extra increment that landed between two examples.  Prints the figures.
    """
    env.sentinel()
    env.check_bystanders()
    _, dropped, closes = env.counted()
    print(f"\n[faults] fuzzing through a stockwire serve process: "
          f"outcomes {dict(sorted(env.outcomes.items()))}; "
          f"messages_dropped_total {dropped}; client_closes_total {closes}", flush=True)
    assert env.dropped or env.closed, "the fuzz tests above did not run"
    assert {r: v for r, v in dropped.items() if v} == env.dropped
    assert {r: v for r, v in closes.items() if v} == env.closed
