"""This process's share of a rehearsal: the plan, the clock, the screens, the verdict.

Locust runs users as greenlets in one process (or in several worker
processes); what they share — the plan, the sale clock, which rooms viewers
join, the open sessions that the final check inspects — lives in one
:class:`Sale` per process.  In a distributed run each worker has its own, built
from the options the master sends, so the master alone opens the sale and
every worker checks only its own screens.
"""

from __future__ import annotations

import itertools
import logging
import time
from argparse import Namespace

import gevent
import redis

from clients.publisher import SyncPublisher, connect_blocking
from gateway.auth import Authenticator
from gateway.protocol import epoch_key, stock_key
from loadtest import report
from loadtest.report import Reporter, RequestHook
from loadtest.scenarios import Plan
from loadtest.session import RoomSession
from loadtest.truth import Truth, differences, read_truth

log = logging.getLogger("loadtest")


class Sale:
    def __init__(self, plan: Plan, options: Namespace, hook: RequestHook) -> None:
        self.plan = plan
        self.options = options
        self.hook = hook
        #: Sale clock origin: this process's test start (the master's shape and
        #: every worker start within milliseconds of each other).
        self.t0 = time.monotonic()
        #: Set when the sale is over or the test stops: stock services stop changing stock.
        self.quiet = False
        self.verified = False
        self.sessions: set[RoomSession] = set()
        self._viewer_rooms = itertools.cycle(plan.rooms)
        self._host_rooms = itertools.cycle(plan.rooms)
        self._stock_index = itertools.count()
        self._verifier: gevent.Greenlet | None = None
        self._redis = connect_blocking(options.redis_url, cluster=options.redis_cluster)
        self.host_token = host_token(options, plan) if plan.hosts else ""

    # -- shared by the users ---------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def reporter(self, request_type: str) -> Reporter:
        return Reporter(self.hook, request_type)

    def next_viewer_room(self) -> str:
        return next(self._viewer_rooms)

    def next_host_room(self) -> str:
        return next(self._host_rooms)

    def next_stock_index(self) -> int:
        """Which share of the order curve a stock-service user takes (0..stock_users-1).

        Counted in Redis, so that stock-service users on different worker
        processes take different shares and the sale gets exactly its orders.
        """
        try:
            n = int(self._redis.incr(self._counter_key)) - 1
            self._redis.expire(self._counter_key, 24 * 3600)
        except redis.RedisError:
            n = next(self._stock_index)
        return n % self.plan.stock_users

    @property
    def _counter_key(self) -> str:
        return f"{self.options.room_prefix}:{self.options.run_id}:stock-users"

    def publisher(self) -> SyncPublisher:
        return SyncPublisher(self.options.redis_url, cluster=self.options.redis_cluster)

    def host_fields(self) -> frozenset[str]:
        """Fields every host item must carry: the gateway's, plus those the sale sets."""
        s = self.plan.scenario
        fields = {"alert", "st", "name", "initial"}
        if s.reserve:
            fields.add("reserve")
        if s.platforms:
            fields.add("platforms")
        if s.declare_batches:
            fields.add("batches")
        return frozenset(fields)

    # -- the master's (or the single process's) duties ----------------------------------------

    def open(self) -> None:
        """The announcement: every SKU of every room goes on screen at its opening quantity."""
        reporter = self.reporter(report.STOCK)
        qty, fields = self.plan.opening(int(time.time() * 1000))
        with self.publisher() as pub:
            for room in self.plan.rooms:
                for sku in self.plan.skus:
                    started = time.perf_counter()
                    result = pub.set(room, sku, qty, **fields)
                    ms = (time.perf_counter() - started) * 1000
                    if not result.ok:
                        reporter.fail(report.OPEN, f"{room}/{sku}: {result.status} {result.detail}", ms)
                        raise RuntimeError(f"could not open {room}/{sku}: {result}")
                    reporter.ok(report.OPEN, ms)
        log.info("sale opened: %s", self.plan.describe())

    def cleanup(self) -> None:
        """Remove the rehearsal's rooms from Redis, unless asked to keep them."""
        if self.options.keep_data:
            return
        try:
            for room in self.plan.rooms:
                self._redis.delete(stock_key(room), epoch_key(room))
            self._redis.delete(self._counter_key)
        except redis.RedisError as exc:
            log.warning("could not delete the rehearsal's rooms: %s", exc)

    # -- the final check -------------------------------------------------------------------------

    def start_verify(self) -> None:
        """Begin the final check in the background (the shape asks when the sale ends)."""
        if self._verifier is None and not self.verified:
            self._verifier = gevent.spawn(self.verify)

    def finish(self) -> None:
        """The test is stopping: make sure the final check has run, while screens are open."""
        if self._verifier is not None:
            self._verifier.join()
        elif not self.verified:
            self.verify()

    def verify(self) -> None:
        """Stop stock changes, let the gateway flush, then hold every screen against Redis."""
        self.quiet = True
        gevent.sleep(self.options.settle)
        checker = self.reporter(report.CHECK)
        truths: dict[str, Truth] = {}
        try:
            for room in self.plan.rooms:
                truths[room] = read_truth(self._redis, room)
        except redis.RedisError as exc:
            checker.fail(report.FINAL_STATE, f"could not read Redis: {exc}")
            self.verified = True
            return
        for session in list(self.sessions):
            role = "host" if session.is_host else "viewer"
            name = f"{report.FINAL_STATE} ({role})"
            problems = differences(session.view, truths[session.room], host=session.is_host)
            if problems:
                checker.fail(name, f"{session.room}: " + "; ".join(problems))
            else:
                checker.ok(name, 0)
            if session.is_host and session.stats_frames == 0:
                checker.fail(report.NO_STATS, f"{session.room}: a host screen got no stats frame")
        self.verified = True
        log.info("final state checked on %d screens", len(self.sessions))


def host_token(options: Namespace, plan: Plan) -> str:
    """A host token for the rehearsal's rooms: given, or signed with the gateway's secret."""
    if options.host_token:
        return str(options.host_token)
    if not options.jwt_secret:
        raise ValueError("host screens need --host-token or --jwt-secret "
                         "(or STOCKWIRE_JWT_SECRET); pass --hosts-per-room 0 to run without hosts")
    rooms = [f"{options.room_prefix}-{options.run_id}-*"]
    ttl = plan.duration + 3600
    return Authenticator(secret=options.jwt_secret).mint("host", rooms, ttl, subject="loadtest")


_current: Sale | None = None


def configure(plan: Plan, options: Namespace, hook: RequestHook) -> Sale:
    global _current
    _current = Sale(plan, options, hook)
    return _current


def current() -> Sale:
    if _current is None:
        raise RuntimeError("the sale is not configured: run the suite through loadtest/locustfile.py")
    return _current


def current_or_none() -> Sale | None:
    return _current
