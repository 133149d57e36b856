"""The suite's Locust command-line options, and turning them into a plan.

Every scenario number an operator may want to change for their own sale is
an option (also settable as ``LOCUST_<NAME>`` in the environment or in a
locust.conf), so a rehearsal is one command that can be pasted into a ticket.
Unset numeric options (default None) take the scenario's own value.
"""

from __future__ import annotations

import os
import secrets
import time
from argparse import Namespace
from typing import Any

from loadtest.report import Thresholds
from loadtest.scenarios import SCENARIOS, Plan


def add_arguments(parser: Any) -> None:
    """Register the options on Locust's parser (``init_command_line_parser``)."""
    # On the parser itself, not a group: only Locust's own add_argument knows is_secret.
    group = parser
    group.add_argument("--scenario", choices=sorted(SCENARIOS), default="kol-surge",
                       help="which sale to rehearse (docs/loadtest.md describes each)")
    group.add_argument("--speed", type=float, default=1.0,
                       help="compress sale time: 5 plays a 5-minute sale in 1 minute, same orders")
    group.add_argument("--rooms", type=int, default=1, help="live rooms running the sale at once")
    group.add_argument("--skus", type=int, default=1, help="SKUs on sale per room")
    group.add_argument("--stock", type=int, default=None,
                       help="planned units per SKU; scales orders, reserve, restock and batches")
    group.add_argument("--peak-viewers", type=int, default=None,
                       help="viewers at the audience peak, over all rooms")
    group.add_argument("--hosts-per-room", type=int, default=1, help="host screens per room")
    group.add_argument("--stock-users", type=int, default=2,
                       help="stock-service users that share the order curve")
    group.add_argument("--redis-url", default=os.environ.get("STOCKWIRE_REDIS_URL",
                                                             "redis://127.0.0.1:6379/0"),
                       help="Redis the stock services write to (env STOCKWIRE_REDIS_URL)")
    group.add_argument("--redis-cluster", action="store_true",
                       default=os.environ.get("STOCKWIRE_REDIS_CLUSTER", "").lower() in ("1", "true", "yes"),
                       help="--redis-url names a node of a Redis Cluster (env STOCKWIRE_REDIS_CLUSTER)")
    group.add_argument("--jwt-secret", default=os.environ.get("STOCKWIRE_JWT_SECRET", ""),
                       is_secret=True,
                       help="the gateway's HS256 secret, to sign host tokens (env STOCKWIRE_JWT_SECRET)")
    group.add_argument("--host-token", default=os.environ.get("STOCKWIRE_HOST_TOKEN", ""),
                       is_secret=True,
                       help="a host token that opens the rehearsal's rooms, instead of --jwt-secret")
    group.add_argument("--room-prefix", default="rehearsal", help="rooms are PREFIX-RUNID-N")
    group.add_argument("--run-id", default="", help="fixes the room names (default: a fresh id per run)")
    group.add_argument("--settle", type=float, default=2.0,
                       help="seconds between the last stock change and the final-state check")
    group.add_argument("--ping-interval", type=float, default=5.0,
                       help="seconds between a viewer's application pings (0: none)")
    group.add_argument("--keep-data", action="store_true",
                       help="leave the rehearsal's rooms in Redis afterwards (default: delete them)")
    group.add_argument("--max-p99-ms", type=float, default=0.0,
                       help="fail the run when a publish-to-screen p99 exceeds this (0: no limit)")
    group.add_argument("--max-fail-ratio", type=float, default=0.0,
                       help="fail the run when failures/events exceed this ratio (default 0)")
    group.add_argument("--max-seen-ms", type=float, default=0.0,
                       help="fail the run when a sold-out or restock took longer to show (0: no limit)")
    group.add_argument("--max-restock-seen-ms", type=float, default=None,
                       help="fail the run when a restock took longer to show "
                            "(default: the scenario's, 1000 for tshirt-sellout; 0: no limit)")


def new_run_id() -> str:
    return time.strftime("%H%M%S") + secrets.token_hex(2)


def plan_from(options: Namespace) -> Plan:
    """The run's plan; ``options.run_id`` must be set (the master sets it)."""
    for name in ("rooms", "skus", "stock_users"):
        if getattr(options, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if options.stock is not None and options.stock < 1:
        raise ValueError("--stock must be at least 1")
    if options.peak_viewers is not None and options.peak_viewers < 0:
        raise ValueError("--peak-viewers must be >= 0")
    if options.speed <= 0:
        raise ValueError("--speed must be > 0")
    return Plan.build(
        SCENARIOS[options.scenario], run_id=options.run_id, prefix=options.room_prefix,
        rooms=options.rooms, skus=options.skus, stock=options.stock,
        peak_viewers=options.peak_viewers, hosts_per_room=options.hosts_per_room,
        speed=options.speed, stock_users=options.stock_users,
    )


def thresholds_from(options: Namespace) -> Thresholds:
    """The limits the exit code keeps: the command line's, else the scenario's own."""
    restock = getattr(options, "max_restock_seen_ms", None)
    if restock is None:
        restock = SCENARIOS[options.scenario].max_restock_seen_ms
    return Thresholds(max_p99_ms=options.max_p99_ms, max_fail_ratio=options.max_fail_ratio,
                      max_seen_ms=options.max_seen_ms, max_restock_seen_ms=restock)
