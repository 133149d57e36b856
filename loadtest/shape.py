"""The load shape: the audience of the chosen scenario, then the final check.

One shape serves every scenario (``--scenario`` picks it), because Locust
uses a single shape per run.  While the sale runs, the user count is the
fixed users (hosts, stock services, the warehouse — dispatched first) plus
the scenario's audience at this moment.  When the sale is over the shape
keeps everyone connected, asks every process to check its screens against
Redis, waits long enough for the results to reach the stats (a worker
reports every 3 s), and then ends the test.
"""

from __future__ import annotations

from locust import LoadTestShape
from locust.runners import WORKER_REPORT_INTERVAL, MasterRunner

from loadtest.options import plan_from
from loadtest.scenarios import Plan

VERIFY_MESSAGE = "stockwire-verify"


class ScenarioShape(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self._plan: Plan | None = None
        self._verify_at: float | None = None

    def reset_time(self) -> None:
        super().reset_time()
        self._verify_at = None

    @property
    def plan(self) -> Plan:
        if self._plan is None:
            assert self.runner is not None
            self._plan = plan_from(self.runner.environment.parsed_options)
        return self._plan

    def users_at(self, t: float) -> int:
        plan = self.plan
        fixed = plan.hosts + plan.stock_users + 1
        return fixed + plan.viewers_at(min(t, plan.duration))

    def tick(self) -> tuple[int, float] | None:
        plan = self.plan
        t = self.get_run_time()
        rate = plan.viewer_spawn_rate()
        if t < plan.duration:
            return self.users_at(t), rate
        assert self.runner is not None
        if self._verify_at is None:
            self._verify_at = t
            self.runner.send_message(VERIFY_MESSAGE)
        options = self.runner.environment.parsed_options
        hold = float(options.settle) + 1.0
        if isinstance(self.runner, MasterRunner):
            hold += 2 * WORKER_REPORT_INTERVAL
        if t < self._verify_at + hold:
            return self.users_at(plan.duration), rate
        return None
