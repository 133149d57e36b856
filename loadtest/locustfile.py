"""stockwire flash-sale rehearsal: a Locust 2.x suite.

    locust -f loadtest/locustfile.py --headless --host ws://127.0.0.1:8765 \\
        --redis-url redis://127.0.0.1:6379/0 --scenario kol-surge --speed 5

or ``make loadtest SCENARIO=kol-surge`` (``loadtest/run.py``), which can also
start a Redis and a gateway for you.  ``docs/loadtest.md`` explains the
scenarios, the numbers in the report and the exit code.

This module only wires the pieces to Locust's events:

* ``init``: options → plan; fixed user counts; a run id all processes share.
* ``test_start``: this process's :class:`~loadtest.sale.Sale`; the master (or
  the single process) opens the sale in Redis before any user starts.
* the shape's verify message / ``test_stopping``: the final-state check,
  while every screen is still connected.
* ``quitting``: thresholds → ``environment.process_exit_code``.
"""

from __future__ import annotations

import logging
from typing import Any

from locust import events, log
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest import options as opts
from loadtest import sale as sales
from loadtest.report import evaluate
from loadtest.shape import VERIFY_MESSAGE, ScenarioShape
from loadtest.users import HostUser, StockServiceUser, ViewerUser, WarehouseUser

__all__ = ["HostUser", "ScenarioShape", "StockServiceUser", "ViewerUser", "WarehouseUser"]

logger = logging.getLogger("loadtest")


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    opts.add_arguments(parser)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if runner is not None:
        runner.register_message(VERIFY_MESSAGE, _on_verify)
    options = environment.parsed_options
    if options is None or isinstance(runner, WorkerRunner):
        return  # workers take their options from the master's spawn message
    if not options.run_id:
        options.run_id = opts.new_run_id()  # sent to workers with the options
    try:
        plan = opts.plan_from(options)
        if plan.hosts:
            sales.host_token(options, plan)
        host = environment.host or ""
        if not host.startswith(("ws://", "wss://")):
            raise ValueError(f"--host must be the gateway's ws:// or wss:// URL, got {host!r}")
    except ValueError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None
    HostUser.fixed_count = plan.hosts
    StockServiceUser.fixed_count = plan.stock_users
    WarehouseUser.fixed_count = 1
    logger.info("rehearsal plan: %s", plan.describe())


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    assert options is not None
    sale = sales.configure(opts.plan_from(options), options, environment.events.request)
    if not isinstance(environment.runner, WorkerRunner):
        sale.open()


def _on_verify(environment: Environment, msg: Any, **_: Any) -> None:
    sale = sales.current_or_none()
    if sale is not None:
        sale.start_verify()


@events.test_stopping.add_listener
def _on_test_stopping(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # the screens live on the workers
    sale = sales.current_or_none()
    if sale is not None:
        sale.finish()


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if runner is None or isinstance(runner, WorkerRunner) or environment.parsed_options is None:
        return
    sale = sales.current_or_none()
    if sale is not None:
        sale.cleanup()
    verdict = evaluate(runner.stats.entries.values(), opts.thresholds_from(environment.parsed_options))
    if runner.exceptions:
        verdict.check(False, f"{len(runner.exceptions)} kinds of exception in user code")
    for line in verdict.lines:
        logger.info("verdict: %s", line)
    if log.unhandled_greenlet_exception:
        environment.process_exit_code = 2
    else:
        environment.process_exit_code = 1 if verdict.failed else 0
