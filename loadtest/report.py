"""How the suite speaks to Locust: request events in, a verdict out.

Everything the suite measures goes through ``events.request.fire`` so it lands
in Locust's own table, charts, CSV and HTML report, on one process or
aggregated from many workers.  The *names* are the suite's vocabulary; they
are constants here because docs, thresholds and the smoke test rely on them.

Response times are milliseconds.  For the stream entries (``update``,
``sold-out seen``, ``restock seen``) they are publish-to-receive delays: the
record's ``ts`` (Redis server time) subtracted from the receiving clock, so
the load generator's clock must agree with Redis's (same machine, or NTP).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

# request types (the "Type" column)
VIEWER = "ws-viewer"
HOST = "ws-host"
STOCK = "redis"
CHECK = "check"

# names (the "Name" column)
CONNECT = "connect"
SNAPSHOT = "snapshot"
UPDATE = "update"
SOLD_OUT_SEEN = "sold-out seen"
RESTOCK_SEEN = "restock seen"
PING = "ping"
STATS = "stats"
RESYNC = "resync requested"
CLOSED = "closed unexpectedly"
BACKWARDS = "version went backwards"
SEQ_BACKWARDS = "sequence went backwards"
BAD_FRAME = "undecodable frame"
VIEWER_EXTRA = "viewer item with host fields"
STATUS_WRONG = "status does not match qty"
PLATFORMS_SUM = "platforms do not add up"
FINAL_STATE = "final state"
NO_STATS = "no stats frames"
OPEN = "open sale"
SOLD_OUT = "sold out"

#: Entries whose response time is a publish-to-screen delay.
LATENCY_NAMES = frozenset({UPDATE, SOLD_OUT_SEEN, RESTOCK_SEEN})
SEEN_NAMES = frozenset({SOLD_OUT_SEEN, RESTOCK_SEEN})


def host_missing(field_name: str) -> str:
    return f"host item without {field_name}"


def alert_seen(tier: str) -> str:
    return f"alert {tier} seen"


def sold_out_name(platform: str | None) -> str:
    return SOLD_OUT if platform is None else f"{SOLD_OUT} on {platform}"


class CheckFailed(Exception):
    """A rule of the protocol or of the rehearsal was broken; the text says which."""


class RequestHook(Protocol):
    def fire(self, *, reverse: bool = False, **kwargs: Any) -> None: ...


class Reporter:
    """Fires request events of one type (viewer, host, stock service, check)."""

    def __init__(self, hook: RequestHook, request_type: str) -> None:
        self.hook = hook
        self.request_type = request_type

    def ok(self, name: str, ms: float, length: int = 0) -> None:
        self.hook.fire(request_type=self.request_type, name=name, response_time=max(0.0, ms),
                       response_length=length, exception=None, context={})

    def fail(self, name: str, reason: str | BaseException, ms: float = 0.0) -> None:
        exception = reason if isinstance(reason, BaseException) else CheckFailed(reason)
        self.hook.fire(request_type=self.request_type, name=name, response_time=max(0.0, ms),
                       response_length=0, exception=exception, context={})


# -- the verdict ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Command-line limits; 0 (or a negative value) switches a limit off."""

    max_p99_ms: float = 0.0
    max_fail_ratio: float = 0.0
    max_seen_ms: float = 0.0
    #: Only for ``restock seen``; a scenario may carry its own (tshirt-sellout: 1 s).
    max_restock_seen_ms: float = 0.0


class EntryStats(Protocol):
    """The part of ``locust.stats.StatsEntry`` the verdict reads."""

    method: str | None
    name: str
    num_requests: int
    num_failures: int
    max_response_time: float

    def get_response_time_percentile(self, percent: float) -> float: ...


@dataclass(slots=True)
class Verdict:
    lines: list[str] = field(default_factory=list)
    failed: bool = False

    def check(self, ok: bool, text: str) -> None:
        self.lines.append(("ok      " if ok else "FAILED  ") + text)
        self.failed = self.failed or not ok


def evaluate(entries: Iterable[EntryStats], thresholds: Thresholds) -> Verdict:
    """Judge a run's stats: failures against the allowed ratio, latencies against limits.

    The fail ratio counts failures of every entry over every event; latency
    limits apply to the publish-to-screen entries of viewers and hosts.
    """
    verdict = Verdict()
    rows = [e for e in entries if e.num_requests or e.num_failures]
    events = sum(e.num_requests for e in rows)
    failures = sum(e.num_failures for e in rows)
    ratio = failures / events if events else 0.0
    limit = max(0.0, thresholds.max_fail_ratio)
    verdict.check(ratio <= limit, f"failures {failures}/{events} = {ratio:.4%} (allowed {limit:.4%})")
    if not events:
        verdict.check(False, "no events were recorded")
    for entry in rows:
        if entry.method not in (VIEWER, HOST) or entry.num_requests == 0:
            continue
        label = f"{entry.method} {entry.name}"
        if thresholds.max_p99_ms > 0 and entry.name in LATENCY_NAMES:
            p99 = entry.get_response_time_percentile(0.99)
            verdict.check(p99 <= thresholds.max_p99_ms,
                          f"{label}: p99 {p99:.0f} ms (limit {thresholds.max_p99_ms:.0f} ms)")
        if thresholds.max_seen_ms > 0 and entry.name in SEEN_NAMES:
            worst = entry.max_response_time
            verdict.check(worst <= thresholds.max_seen_ms,
                          f"{label}: max {worst:.0f} ms (limit {thresholds.max_seen_ms:.0f} ms)")
        restock_limit = thresholds.max_restock_seen_ms
        if restock_limit > 0 and entry.name == RESTOCK_SEEN:
            worst = entry.max_response_time
            verdict.check(worst <= restock_limit,
                          f"{label}: max {worst:.0f} ms (restock limit {restock_limit:g} ms)")
    return verdict
