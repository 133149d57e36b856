"""The people and services in a live room, as Locust users.

* :class:`ViewerUser` — a viewer overlay: one websocket, kept current by
  version checks, reporting how late each change arrived.
* :class:`HostUser` — the host's screen (``?role=host``): full records,
  alerts and stats, checked for the host-only fields.
* :class:`StockServiceUser` — an order service: takes its share of the
  scenario's order curve and sells one unit per order through the publisher
  SDK; an order refused at zero is a sale that did not happen, not an error.
* :class:`WarehouseUser` — the stock service's scheduler (one per run):
  timed batch releases, the reserve after a sell-out, the restock.

Counts are not set here: the shape (:mod:`loadtest.shape`) decides how many
viewers, and ``locustfile.py`` sets the fixed counts of the others from the plan.
"""

from __future__ import annotations

import math
import random
import time
from typing import ClassVar

import gevent
import redis
from locust import User, constant, task

from gateway.stock import Status
from loadtest import report
from loadtest.sale import Sale, current
from loadtest.scenarios import Action
from loadtest.session import RoomSession

#: Reconnect backoff (full jitter), like the SDK's: base * 2^attempt, capped.
BACKOFF_BASE = 0.2
BACKOFF_CAP = 5.0


def backoff(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 16)))


class ViewerUser(User):
    """Holds a websocket to one room for its whole life and reconnects if it drops."""

    weight = 1
    wait_time = constant(0)
    role: ClassVar[str] = "viewer"
    request_type: ClassVar[str] = report.VIEWER

    sale: Sale
    session: RoomSession

    def on_start(self) -> None:
        self.sale = current()
        self.session = self.make_session()
        self.sale.sessions.add(self.session)

    def make_session(self) -> RoomSession:
        return RoomSession(str(self.host), self.sale.next_viewer_room(),
                           self.sale.reporter(self.request_type), role=self.role)

    def on_stop(self) -> None:
        # Ramp-down and the end of the test close screens on purpose: no failure.
        self.session.close()
        self.sale.sessions.discard(self.session)

    @task
    def watch(self) -> None:
        attempt = 0
        while True:
            try:
                self.session.connect()
            except Exception:  # reported by connect(); try again like a real overlay
                gevent.sleep(backoff(attempt))
                attempt += 1
                continue
            self._stay()
            if self.session.view.synced:
                attempt = 0
            self.session.report.fail(report.CLOSED, self.session.close_reason or "connection lost")
            self.session.close(intentional=False)
            gevent.sleep(backoff(attempt))
            attempt += 1

    def _stay(self) -> None:
        """Until the connection ends: the reader greenlet works, this one pings."""
        interval = float(self.sale.options.ping_interval)
        while not self.session.wait(interval if interval > 0 else None):
            self.session.ping()


class HostUser(ViewerUser):
    """The host's screen: every record field, alerts, and stats once a second."""

    fixed_count = 1
    role: ClassVar[str] = "host"
    request_type: ClassVar[str] = report.HOST

    def make_session(self) -> RoomSession:
        return RoomSession(
            str(self.host), self.sale.next_host_room(), self.sale.reporter(self.request_type),
            role=self.role, token=self.sale.host_token, required=self.sale.host_fields(),
            platforms_sum=bool(self.sale.plan.scenario.platforms),
        )


class StockServiceUser(User):
    """Sells along the order curve: its share of every stream, for every room and SKU.

    Each of the plan's ``stock_users`` takes orders ``k`` with
    ``k ≡ index (mod stock_users)`` of the curve's count so far (computed as
    ``floor((due + index) / stock_users)``, which sums exactly to the total).
    Behind schedule — a slow Redis, a busy CPU — it catches up at once, so
    the sale always gets its orders; the per-order times show the cost.
    """

    fixed_count = 2
    wait_time = constant(0)

    def on_start(self) -> None:
        self.sale = current()
        self.publisher = self.sale.publisher()
        self.index = self.sale.next_stock_index()
        self.reporter = self.sale.reporter(report.STOCK)
        plan = self.sale.plan
        self.work = [(room, sku, stream) for room in plan.rooms for sku in plan.skus
                     for stream in plan.scenario.streams]
        self.done = [0] * len(self.work)

    def on_stop(self) -> None:
        self.publisher.close()

    @task
    def sell(self) -> None:
        plan = self.sale.plan
        shares = plan.stock_users
        _, window_end = plan.order_window()
        while True:
            if self.sale.quiet:
                gevent.sleep(0.5)
                continue
            t = self.sale.elapsed()
            best, most = -1, 0
            for i, (_, _, stream) in enumerate(self.work):
                behind = math.floor((plan.orders_due(stream, t) + self.index) / shares) - self.done[i]
                if behind > most:
                    best, most = i, behind
            if best < 0:
                gevent.sleep(0.5 if t > window_end else 0.005)
                continue
            self.order(best)

    def order(self, i: int) -> None:
        room, sku, stream = self.work[i]
        self.done[i] += 1  # counted even when lost: an order is never retried (no double sale)
        started = time.perf_counter()
        try:
            result = self.publisher.adjust(room, sku, -1, platform=stream.platform)
        except (redis.RedisError, OSError) as exc:
            self.reporter.fail(stream.label, exc, (time.perf_counter() - started) * 1000)
            gevent.sleep(0.1)
            return
        ms = (time.perf_counter() - started) * 1000
        if result.ok:
            self.reporter.ok(stream.label, ms)
        elif result.status is Status.INSUFFICIENT:
            self.reporter.ok(report.sold_out_name(stream.platform), ms)
        else:
            self.reporter.fail(stream.label, f"{room}/{sku}: {result.status} {result.detail}", ms)


class WarehouseUser(User):
    """Runs the scenario's actions once per room and SKU; one per run."""

    fixed_count = 1
    wait_time = constant(0)
    #: How often a sell-out is looked for (it triggers "after_sellout" actions).
    poll_interval = 0.05

    def on_start(self) -> None:
        self.sale = current()
        self.publisher = self.sale.publisher()
        self.reporter = self.sale.reporter(report.STOCK)

    def on_stop(self) -> None:
        self.publisher.close()

    @task
    def run_schedule(self) -> None:
        plan = self.sale.plan
        pending = [(a, room, sku) for a in plan.scenario.actions for room in plan.rooms for sku in plan.skus]
        sold_out_at: dict[tuple[str, str], float] = {}
        while pending and not self.sale.quiet:
            t = self.sale.elapsed()
            watch = {room for a, room, sku in pending
                     if a.after_sellout is not None and (room, sku) not in sold_out_at}
            for room in sorted(watch):
                try:
                    records = self.publisher.stock(room)
                except (redis.RedisError, OSError) as exc:
                    self.reporter.fail("read stock", exc)
                    continue
                for sku, record in records.items():
                    if record.get("qty") == 0:
                        sold_out_at.setdefault((room, sku), t)
            for entry in [p for p in pending if self._due(p, t, sold_out_at)]:
                pending.remove(entry)
                self.act(*entry)
            gevent.sleep(self.poll_interval)
        while True:  # every action is done; a returning task would run the schedule again
            gevent.sleep(1.0)

    def _due(self, entry: tuple[Action, str, str], t: float,
             sold_out_at: dict[tuple[str, str], float]) -> bool:
        action, room, sku = entry
        plan = self.sale.plan
        if action.at is not None:
            return t >= plan.run_time(action.at)
        since = sold_out_at.get((room, sku))
        return since is not None and t >= since + plan.run_time(action.after_sellout or 0.0)

    def act(self, action: Action, room: str, sku: str) -> None:
        units = self.sale.plan.units(action.units)
        started = time.perf_counter()
        try:
            if action.op == "release":
                result = self.publisher.release(room, sku, units)
            else:
                result = self.publisher.adjust(room, sku, units)
        except (redis.RedisError, OSError) as exc:
            self.reporter.fail(action.label, exc, (time.perf_counter() - started) * 1000)
            return
        ms = (time.perf_counter() - started) * 1000
        if result.ok:
            self.reporter.ok(action.label, ms)
        else:
            self.reporter.fail(action.label, f"{room}/{sku}: {result.status} {result.detail}", ms)
