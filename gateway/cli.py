"""``stockwire`` command line: serve | demo | publish | token | watch."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
import types
import typing
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway import logs
from gateway.settings import Settings

EXIT_OK, EXIT_INVALID, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 2, 3, 4


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run on uvloop where it exists; it roughly halves per-frame loop overhead."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - non-POSIX platforms
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# -- settings <-> flags --------------------------------------------------------


def add_settings_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per Settings field; unset flags leave env/defaults in charge."""
    for name, field in Settings.model_fields.items():
        if name in skip:
            continue
        kwargs: dict[str, Any] = {"default": None, "dest": name}
        annotation = field.annotation
        if typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(annotation)
        elif annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif annotation in (int, float):
            kwargs["type"] = annotation
        elif isinstance(annotation, types.UnionType):  # pragma: no cover - none yet
            kwargs["type"] = str
        env = f"STOCKWIRE_{name.upper()}"
        kwargs["help"] = f"{field.description} (env {env}, default {field.default!r})"
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    given.update(overrides)
    return Settings(**given)


# -- serve / demo --------------------------------------------------------------


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(settings: Settings, *, reuse_port: bool = False, worker: int = 0) -> None:
    """Serve until SIGTERM/SIGINT, then drain: 1012 closes spread over the drain window.

    A second signal during the drain stops at once: the 1012s not sent yet are
    cancelled and the remaining clients are closed with 1001.
    """
    from gateway.server import Gateway

    gateway = Gateway(settings, reuse_port=reuse_port, worker=worker)
    await gateway.start()
    await _until_signalled()
    drain = asyncio.create_task(gateway.drain())
    second = asyncio.create_task(_until_signalled())
    done, _ = await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
    if drain not in done:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await gateway.stop()
    second.cancel()


async def _demo(settings: Settings, room: str, duration: float | None, rate: float) -> None:
    from gateway.demo import FlashSale
    from gateway.server import Gateway

    if settings.jwt_secret is None and settings.jwt_public_key_file is None:
        # Host screens always need a token; the demo signs its own.
        settings = settings.model_copy(update={"jwt_secret": secrets.token_urlsafe(32)})
    gateway = Gateway(settings)
    await gateway.start()
    token = gateway.auth.mint("host", [room], ttl=7 * 24 * 3600, subject="demo-host")
    sale = FlashSale(gateway.broker.execute, room, base_rate=rate)
    await sale.open()  # the first round starts here; sale.run() below plays it, not a second one
    url = gateway.url
    http = f"http://{settings.host}:{gateway.port}"
    print(
        f"stockwire demo: a simulated flash sale is running in room '{room}'.\n\n"
        f"  Viewer overlay:       {http}/overlay/{room}\n"
        f"  Host teleprompter:    {http}/host/{room}?token={token}\n"
        f"  WebSocket (viewers):  {url}/ws/{room}\n"
        f"  WebSocket (host):     {url}/ws/{room}?role=host&token={token}\n"
        f"  Metrics:              {http}/metrics\n\n"
        f"Watch it live from another terminal:\n"
        f"  .venv/bin/stockwire watch {room} --url {url}\n"
        f"  .venv/bin/stockwire watch {room} --url {url} --role host --token {token}\n\n"
        f"Press Ctrl-C to stop.",
        flush=True,
    )
    sale_task = asyncio.create_task(sale.run())
    try:
        if duration is None:
            await _until_signalled()
        else:
            await asyncio.sleep(duration)
    finally:
        sale_task.cancel()
        # Its batches and restocks are cancelled with it, before the gateway goes.
        await asyncio.wait([sale_task])
        await gateway.stop()
    print(f"stockwire demo: {sale.orders} orders, {sale.refused} refused at zero.", flush=True)


# -- publish -------------------------------------------------------------------


class InvalidInput(ValueError):
    """Input a command cannot use: reported in one line with exit code 2."""


def _batches(values: list[str] | None) -> list[dict[str, int]] | None:
    """``--batch 300=500``: release 500 units 300 seconds from now."""
    if not values:
        return None
    now_ms = int(time.time() * 1000)
    out = []
    for value in values:
        seconds, sep, qty = value.partition("=")
        try:
            if not sep:
                raise ValueError
            out.append({"at": now_ms + int(float(seconds) * 1000), "qty": int(qty)})
        except (ValueError, OverflowError):
            raise InvalidInput(f"--batch takes SECONDS=QTY (QTY a whole number), got {value!r}") from None
    return out


def _platform_pairs(values: list[str] | None) -> dict[str, int] | None:
    if not values:
        return None
    out: dict[str, int] = {}
    for value in values:
        name, sep, qty = value.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name] = int(qty)
        except ValueError:
            raise InvalidInput(f"--platform-qty takes NAME=QTY (QTY a whole number), got {value!r}") from None
    return out


async def _publish(args: argparse.Namespace) -> int:
    """Apply one change; invalid input (here or caught by the publisher) exits 2."""
    try:
        fields = {
            "name": args.name, "initial": args.initial, "reserve": args.reserve,
            "safety": args.safety, "platforms": _platform_pairs(args.platform_qty),
            "batches": _batches(args.batch),
        }
        return await _apply(args, fields)
    except ValueError as exc:
        print(f"stockwire publish: {exc}", file=sys.stderr)
        return EXIT_INVALID


async def _apply(args: argparse.Namespace, fields: dict[str, Any]) -> int:
    from redis.exceptions import RedisError

    from clients.publisher import Publisher
    from gateway.stock import Status

    async with Publisher(args.redis_url, cluster=args.redis_cluster) as pub:
        try:
            if args.set is not None:
                result = await pub.set(args.room, args.sku, args.set, version=args.version, **fields)
            elif args.adjust is not None:
                result = await pub.adjust(args.room, args.sku, args.adjust, platform=args.platform,
                                          version=args.version, **fields)
            else:
                result = await pub.release(args.room, args.sku, args.release,
                                           version=args.version, **fields)
        except (RedisError, OSError) as exc:
            print(f"redis unreachable at {args.redis_url}: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    out = {"status": result.status.value, "qty": result.qty, "ver": result.ver}
    if result.detail:
        out["detail"] = result.detail
    print(json.dumps(out))
    if result.status is Status.OK:
        return EXIT_OK
    return EXIT_INVALID if result.status is Status.INVALID else EXIT_REFUSED


# -- parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stockwire", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run a gateway node")
    add_settings_flags(p)

    p = sub.add_parser("demo", help="run a gateway with a simulated flash sale; no Redis needed")
    add_settings_flags(p, skip=("broker", "redis_url"))
    p.add_argument("--room", default="demo", help="room to run the sale in")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--rate", type=float, default=150.0, help="baseline orders per second")

    p = sub.add_parser("publish", help="change a SKU's stock in Redis and publish it")
    p.add_argument("room")
    p.add_argument("sku")
    op = p.add_mutually_exclusive_group(required=True)
    op.add_argument("--set", type=int, metavar="QTY", help="absolute available quantity")
    op.add_argument("--adjust", type=int, metavar="DELTA", help="add DELTA (negative: a sale)")
    op.add_argument("--release", type=int, metavar="UNITS", help="move UNITS from the reserve")
    p.add_argument("--name", help="display name")
    p.add_argument("--initial", type=int, help="planned quantity (base of the safety line)")
    p.add_argument("--reserve", type=int, help="reserve quantity held back")
    p.add_argument("--safety", type=float, help="this SKU's safety line, e.g. 0.2")
    p.add_argument("--platform-qty", action="append", metavar="NAME=QTY",
                   help="per-platform quantity; repeat for each platform")
    p.add_argument("--platform", help="with --adjust: the platform that sold")
    p.add_argument("--batch", action="append", metavar="SECONDS=QTY",
                   help="declare a timed batch release shown on host screens; repeatable")
    p.add_argument("--version", type=int, help="explicit version (must exceed the stored one)")
    default_redis = os.environ.get("STOCKWIRE_REDIS_URL", Settings.model_fields["redis_url"].default)
    p.add_argument("--redis-url", default=default_redis,
                   help="Redis to publish to (env STOCKWIRE_REDIS_URL)")
    p.add_argument("--redis-cluster", action=argparse.BooleanOptionalAction,
                   default=os.environ.get("STOCKWIRE_REDIS_CLUSTER", "").lower() in ("1", "true", "yes"),
                   help="the URL names a Redis Cluster node (env STOCKWIRE_REDIS_CLUSTER)")

    p = sub.add_parser("token", help="sign an access token (needs STOCKWIRE_JWT_SECRET)")
    p.add_argument("--role", choices=("viewer", "host"), default="viewer")
    p.add_argument("--room", action="append", required=True, dest="rooms", metavar="ROOM",
                   help="room the token opens: exact, or a prefix ending in * ; repeatable")
    p.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    p.add_argument("--subject", default=None, help="who it is for (shows in logs)")
    p.add_argument("--secret", default=None, help="signing secret (default: env STOCKWIRE_JWT_SECRET)")

    p = sub.add_parser("watch", help="print a room's live stock table")
    p.add_argument("room")
    p.add_argument("--url", default="ws://127.0.0.1:8765", help="gateway base URL")
    p.add_argument("--role", choices=("viewer", "host"), default="viewer")
    p.add_argument("--token", default=None, help="access token")
    p.add_argument("--once", action="store_true", help="print the first snapshot and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from gateway.workers import supervise, worker_count

        settings = settings_from(args)
        logs.configure(settings.log_level, settings.log_format)
        if worker_count(settings) > 1:
            return supervise(settings)
        run(_serve(settings))
        return EXIT_OK
    if args.command == "demo":
        settings = settings_from(args, broker="memory")
        logs.configure(settings.log_level, settings.log_format)
        run(_demo(settings, args.room, args.duration, args.rate))
        return EXIT_OK
    if args.command == "publish":
        return int(run(_publish(args)))
    if args.command == "token":
        return _token(args)
    if args.command == "watch":
        return _watch(args)
    return EXIT_INVALID  # pragma: no cover - argparse enforces the choices


def _token(args: argparse.Namespace) -> int:
    """Sign with the shared secret, in the first HMAC algorithm the gateways
    accept (HS256 if they list none): a secret cannot sign RS256 or ES256."""
    from gateway.auth import HMAC_ALGORITHMS, Authenticator

    secret = args.secret or os.environ.get("STOCKWIRE_JWT_SECRET")
    if not secret:
        print("stockwire token: no secret: set STOCKWIRE_JWT_SECRET or pass --secret "
              "(tokens for a public-key deployment are signed by your issuer's private key)",
              file=sys.stderr)
        return EXIT_INVALID
    listed = os.environ.get("STOCKWIRE_JWT_ALGORITHMS", "HS256").split(",")
    hmac = [a.strip() for a in listed if a.strip() in HMAC_ALGORITHMS] or ["HS256"]
    auth = Authenticator(secret=secret, algorithms=hmac)
    print(auth.mint(args.role, args.rooms, args.ttl, args.subject))
    return EXIT_OK


def _watch(args: argparse.Namespace) -> int:
    """A refusal (bad room, bad or missing token) is one line and exit 3, not a traceback."""
    from clients.client import PermanentError
    from clients.watch import watch

    try:
        run(watch(args.url, args.room, role=args.role, token=args.token, once=args.once,
                  snapshot_timeout=10.0 if args.once else None))
    except KeyboardInterrupt:
        pass
    except PermanentError as exc:
        print(f"stockwire watch: refused ({exc.code}): {exc.reason.strip() or 'no reason'}",
              file=sys.stderr)
        return EXIT_REFUSED
    except TimeoutError:
        print(f"stockwire watch: no snapshot from {args.url} within 10 s", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
