"""Fault 6: arbitrary bytes and msgpack structures through a running gateway.

(a) published on a room's Redis channel: the gateway never crashes, every input
    is either accepted as a record or counted in
    ``stockwire_messages_dropped_total``, and screens keep receiving valid updates;
(b) sent by a client (binary and text frames): that client is answered or closed
    with a documented code, never 1011 or an abrupt drop, and others are unaffected.

The decoders alone are fuzzed in ``tests/test_fuzz.py``; here the whole path
runs (Redis pub/sub, hub, fan-out, websockets).  One in-process gateway serves
the whole module, on an event loop in a background thread, so that hypothesis
drives it from plain synchronous tests.
"""

from __future__ import annotations

import asyncio
import threading
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
from gateway.server import Gateway
from tests.conftest import RedisServer, gateway_settings, token
from tests.screens import Screen

T = TypeVar("T")
ROOM = "fuzz"
SENTINEL = "~sentinel~"  # a SKU no strategy below produces
EXAMPLES = settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Close codes a misbehaving client may get (docs/protocol.md §9); 4401/4403 answer
#: a bad token renewal.  Never 1011 (internal error) or 1006 (dropped without a close).
CLIENT_CLOSE_CODES = {CloseCode.BAD_FRAME, CloseCode.MESSAGE_TOO_BIG, CloseCode.TOO_MANY_MESSAGES,
                      CloseCode.TOKEN_EXPIRED, CloseCode.FORBIDDEN}


class LoopThread:
    """An event loop on a background thread; ``run`` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-gateway", daemon=True)
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
    gateway: Gateway
    publisher: Publisher
    bystanders: list[Screen] = field(default_factory=list)
    sentinel_qty: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def dropped(self) -> dict[str, float]:
        metric = self.gateway.metrics.messages_dropped
        return {s.labels["reason"]: s.value for fam in metric.collect() for s in fam.samples
                if s.name.endswith("_total")}

    def received(self) -> float:
        return self.gateway.metrics.updates_received._value.get()

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
    redis = RedisServer(tmp_path_factory.mktemp("fuzz-redis"))
    redis.start()
    loop = LoopThread()

    async def start() -> Env:
        gateway = Gateway(gateway_settings(redis.url))
        await gateway.start()
        env = Env(loop, redis, gateway, Publisher(redis.url))
        for url in (f"{gateway.url}/ws/{ROOM}", f"{gateway.url}/ws/{ROOM}?role=host&token={token()}"):
            screen = Screen(url)
            await screen.__aenter__()
            await screen.until(lambda s: s.frames)
            env.bystanders.append(screen)
        return env

    async def stop(env: Env) -> None:
        for screen in env.bystanders:
            await screen.__aexit__()
        await env.publisher.close()
        await env.gateway.stop()

    environment = loop.run(start())
    try:
        yield environment
    finally:
        loop.run(stop(environment))
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

VALID_CLIENT_FRAMES = [
    msgpack.packb({"t": "resync"}),
    msgpack.packb({"t": "ping"}),
    msgpack.packb({"t": "ping", "id": MAX_INT}),
    msgpack.packb({"t": "auth", "token": token("viewer", (ROOM,))}),
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
    st.sampled_from(VALID_CLIENT_FRAMES),
)
client_sessions = st.one_of(
    st.lists(client_frames, min_size=1, max_size=3),
    st.lists(st.sampled_from(VALID_CLIENT_FRAMES), min_size=1, max_size=4),  # must be answered
    # A flood of valid pings: the message rate limit (4429).
    st.integers(11, 16).map(lambda n: [msgpack.packb({"t": "ping", "id": i}) for i in range(n)]),
)


def _valid(payload: bytes) -> str | None:
    """None if the reference decoder accepts ``payload``, else the drop reason."""
    try:
        record = decode_record(payload)
    except BadMessage as exc:
        return exc.reason
    return None if record.sku != SENTINEL else "sentinel"


# -- (a) the publisher side --------------------------------------------------------------


@EXAMPLES
@given(payload=publisher_payloads)
def test_arbitrary_channel_messages_are_accepted_or_counted(env: Env, payload: bytes) -> None:
    reason = _valid(payload)
    if reason == "sentinel":
        return
    received, dropped = env.received(), env.dropped()
    env.redis.client().spublish(channel(ROOM), payload)
    env.sentinel()  # proves the gateway handled the payload and still serves
    after = env.dropped()
    grew = {r: after.get(r, 0) - dropped.get(r, 0) for r in after if after.get(r, 0) != dropped.get(r, 0)}
    if reason is None:
        assert (env.received() - received, grew) == (2, {})  # the payload and the sentinel
    else:
        assert (env.received() - received, grew) == (1, {reason: 1})
    env.outcomes[reason or "accepted"] = env.outcomes.get(reason or "accepted", 0) + 1
    env.check_bystanders()


# -- (b) the client side ---------------------------------------------------------------------


async def client_session(url: str, frames: list[bytes | str]) -> tuple[int | None, int]:
    """Send ``frames`` then a final ping; returns (close code or None, frames received)."""
    marker = 2**40
    received = 0
    async with connect(url, max_size=None, open_timeout=10) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 10)  # the snapshot
            for frame in frames:
                await ws.send(frame)
            await ws.send(msgpack.packb({"t": "ping", "id": marker}))
            while True:
                data = await asyncio.wait_for(ws.recv(), 10)
                received += 1
                frame = msgpack.unpackb(data) if isinstance(data, bytes) else None
                if isinstance(frame, dict) and frame.get("t") == "pong" and frame.get("id") == marker:
                    return None, received
        except ConnectionClosed:
            return ws.close_code, received
    raise AssertionError("unreachable")  # pragma: no cover


@EXAMPLES
@given(frames=client_sessions)
def test_arbitrary_client_frames_get_an_answer_or_a_documented_close(
    env: Env, frames: list[bytes | str]
) -> None:
    code, _ = env.loop.run(client_session(f"{env.gateway.url}/ws/{ROOM}", frames))
    assert code is None or code in CLIENT_CLOSE_CODES, f"closed with {code}"
    if all(frame in VALID_CLIENT_FRAMES for frame in frames) and len(frames) < 10:
        assert code is None, "valid frames within the rate limit must be answered"
    key = "answered" if code is None else str(code)
    env.outcomes[key] = env.outcomes.get(key, 0) + 1
    env.check_bystanders()


def test_oversized_client_frames_are_counted(env: Env) -> None:
    too_big = env.gateway.metrics.client_closes.labels("too_big")
    before = too_big._value.get()
    code, _ = env.loop.run(client_session(f"{env.gateway.url}/ws/{ROOM}", [b"\x81" * 5000]))
    assert code == CloseCode.MESSAGE_TOO_BIG
    env.loop.run(asyncio.sleep(0.2))  # the server's handler has finished by then
    assert too_big._value.get() == before + 1


def test_the_gateway_survived_the_fuzzing(env: Env) -> None:
    """Runs last in the module: screens still get updates; print what the inputs were."""
    env.sentinel()
    env.check_bystanders()
    closes = env.gateway.metrics.client_closes
    by_reason = {s.labels["reason"]: s.value for fam in closes.collect() for s in fam.samples
                 if s.name.endswith("_total")}
    print(f"\n[faults] fuzzing through a gateway: outcomes {dict(sorted(env.outcomes.items()))}; "
          f"messages_dropped_total {env.dropped()}; client_closes_total {by_reason}", flush=True)
