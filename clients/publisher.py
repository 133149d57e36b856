"""Publisher SDK for stock services: change stock in Redis and publish it atomically.

Every call runs ``gateway/stock.lua`` in Redis, so the stored record and the
published message can never disagree, and concurrent services cannot race
each other into negative stock.

    async with Publisher("redis://127.0.0.1:6379/0") as pub:
        await pub.set("room-1", "sku-1", 5000, name="T-shirt", initial=5000, reserve=800)
        result = await pub.adjust("room-1", "sku-1", -1, platform="douyin")
        if result.status == "insufficient":
            ...  # sold out: the order must be refused

:class:`SyncPublisher` offers the same calls, blocking, for callers that cannot
run an event loop (gevent-based tools such as the Locust suite in ``loadtest/``):

    with SyncPublisher("redis://127.0.0.1:6379/0") as pub:
        pub.adjust("room-1", "sku-1", -1)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self

import msgpack
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.brokers.redis import StockScript, connect
from gateway.protocol import stock_key, valid_room
from gateway.stock import OpKind, OpResult, Status, StockOp

__all__ = ["OpResult", "Publisher", "Status", "SyncPublisher", "connect_blocking"]


class Publisher:
    def __init__(self, redis_url: str = "redis://127.0.0.1:6379/0", *, cluster: bool = False,
                 **redis_options: Any) -> None:
        """``cluster=True`` when ``redis_url`` names a node of a Redis Cluster."""
        self._client = connect(redis_url, cluster=cluster, **redis_options)
        self._script = StockScript(self._client)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    async def execute(self, room: str, op: StockOp) -> OpResult:
        if not valid_room(room):
            raise ValueError(f"invalid room name {room!r}")
        return await self._script(room, op)

    async def set(self, room: str, sku: str, qty: int, *, version: int | None = None,
                  **fields: Any) -> OpResult:
        """Set the absolute available quantity (creates the SKU on first use).

        ``fields`` may carry ``name``, ``initial`` (planned quantity, the base of
        the safety line), ``platforms`` (per-platform quantities), ``reserve``
        and ``safety`` (this SKU's safety line, a fraction of ``initial``).
        """
        return await self.execute(room, _set_op(sku, qty, version, fields))

    async def adjust(self, room: str, sku: str, delta: int, *, platform: str | None = None,
                     version: int | None = None, **fields: Any) -> OpResult:
        """Add ``delta`` (negative for a sale); refused with ``insufficient`` below zero."""
        return await self.execute(room, _adjust_op(sku, delta, platform, version, fields))

    async def release(self, room: str, sku: str, units: int, *, version: int | None = None,
                      **fields: Any) -> OpResult:
        """Move ``units`` from the reserve into sellable stock."""
        return await self.execute(room, _release_op(sku, units, version, fields))

    async def stock(self, room: str) -> dict[str, dict[str, Any]]:
        """The room's stored records, decoded (what a joining screen is sent)."""
        return _decode_stock(await self._client.hgetall(stock_key(room)))


def _fields(fields: dict[str, Any]) -> dict[str, Any]:
    # Drop unset options; an empty platforms map means "no split", not "[]".
    return {k: v for k, v in fields.items() if v is not None and v != {}}


def _set_op(sku: str, qty: int, version: int | None, fields: dict[str, Any]) -> StockOp:
    return StockOp(OpKind.SET, sku, qty, _fields(fields), version)


def _adjust_op(sku: str, delta: int, platform: str | None, version: int | None,
               fields: dict[str, Any]) -> StockOp:
    return StockOp(OpKind.ADJUST, sku, delta, _fields(fields), version, platform)


def _release_op(sku: str, units: int, version: int | None, fields: dict[str, Any]) -> StockOp:
    return StockOp(OpKind.RELEASE, sku, units, _fields(fields), version)


def _decode_stock(raw: Mapping[bytes, bytes]) -> dict[str, dict[str, Any]]:
    return {k.decode(): msgpack.unpackb(v) for k, v in raw.items()}


# -- the blocking publisher --------------------------------------------------------


class _BlockingScriptHost:
    """Lets :class:`StockScript` run on a blocking redis client.

    ``StockScript`` owns the Lua source, the key and argument layout and the
    reply parsing; it awaits whatever its client's registered script returns.
    Here that is a coroutine that calls the blocking script and returns at
    once, so the whole call never suspends and :func:`_run_to_end` can drive
    it without an event loop.  One implementation of the wire call, two
    calling conventions.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def register_script(self, source: str) -> Callable[..., Awaitable[Any]]:
        script = self._client.register_script(source)

        async def call(*, keys: list[Any], args: list[Any]) -> Any:
            return script(keys=keys, args=args)

        return call


def _run_to_end(coro: Coroutine[Any, Any, OpResult]) -> OpResult:
    """Drive a coroutine that completes without suspending; return its value."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the stock script suspended; it cannot run without an event loop")


def connect_blocking(url: str, *, cluster: bool = False, **options: Any) -> redis.Redis | redis.RedisCluster:
    """The blocking twin of :func:`gateway.brokers.redis.connect`: same timeouts, same retry policy."""
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("socket_keepalive", True)
    if cluster:
        options.setdefault("retry", Retry(NoBackoff(), 1))
        return redis.RedisCluster.from_url(url, **options)
    options.setdefault("retry", Retry(NoBackoff(), 0))
    return redis.Redis.from_url(url, **options)


class SyncPublisher:
    """Blocking twin of :class:`Publisher`: same script, same arguments, same results.

    For gevent programs (after ``gevent.monkey.patch_all()`` its socket calls
    yield to other greenlets) and plain scripts.  Like the async publisher it
    never retries behind the caller's back: a sale retried after a lost
    connection could be applied twice (see docs/protocol.md, "Retries").
    """

    def __init__(self, redis_url: str = "redis://127.0.0.1:6379/0", *, cluster: bool = False,
                 **redis_options: Any) -> None:
        """``cluster=True`` when ``redis_url`` names a node of a Redis Cluster."""
        self._client = connect_blocking(redis_url, cluster=cluster, **redis_options)
        self._script = StockScript(_BlockingScriptHost(self._client))  # type: ignore[arg-type]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def execute(self, room: str, op: StockOp) -> OpResult:
        if not valid_room(room):
            raise ValueError(f"invalid room name {room!r}")
        return _run_to_end(self._script(room, op))

    def set(self, room: str, sku: str, qty: int, *, version: int | None = None,
            **fields: Any) -> OpResult:
        """Set the absolute available quantity; see :meth:`Publisher.set`."""
        return self.execute(room, _set_op(sku, qty, version, fields))

    def adjust(self, room: str, sku: str, delta: int, *, platform: str | None = None,
               version: int | None = None, **fields: Any) -> OpResult:
        """Add ``delta`` (negative for a sale); refused with ``insufficient`` below zero."""
        return self.execute(room, _adjust_op(sku, delta, platform, version, fields))

    def release(self, room: str, sku: str, units: int, *, version: int | None = None,
                **fields: Any) -> OpResult:
        """Move ``units`` from the reserve into sellable stock."""
        return self.execute(room, _release_op(sku, units, version, fields))

    def stock(self, room: str) -> dict[str, dict[str, Any]]:
        """The room's stored records, decoded."""
        return _decode_stock(self._client.hgetall(stock_key(room)))  # type: ignore[arg-type]
