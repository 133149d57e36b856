"""Several gateway processes on one port: one event loop per CPU core.

Python runs one thread of bytecode per process, so a node uses every core by
running N workers that all bind the port with SO_REUSEPORT; the kernel spreads
new connections over them.  Each worker keeps its own Redis subscriptions and
rooms: nothing is shared but the port and the metrics directory.

The supervisor forwards SIGTERM/SIGINT to the workers (each drains on its
own), restarts a worker that dies unexpectedly, and exits when all are done.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from typing import Any

from gateway.settings import Settings

log = logging.getLogger("stockwire.workers")

#: A worker that dies sooner than this after starting is not restarted in a
#: tight loop; the supervisor waits this long before trying again.
RESTART_DELAY = 1.0


def worker_count(settings: Settings) -> int:
    """``workers`` or, when 0, the CPUs this process may run on (a cpuset, such
    as ``docker run --cpuset-cpus``, counts; a CPU quota does not)."""
    if settings.workers:
        return settings.workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """Linux: a worker whose supervisor was killed (SIGKILL, OOM) must not linger
    holding the port, so ask the kernel to send it SIGTERM when the parent dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown must do
        pass


def _worker_main(settings: dict[str, Any], index: int) -> None:
    _die_with_parent()
    from gateway import logs
    from gateway.cli import _serve, run

    resolved = Settings(**settings)
    logs.configure(resolved.log_level, resolved.log_format)
    run(_serve(resolved, reuse_port=True, worker=index))


def supervise(settings: Settings) -> int:
    """Run ``workers`` processes until a signal asks them to stop."""
    n = worker_count(settings)
    if settings.port == 0:
        raise SystemExit("--workers > 1 needs a fixed --port (each worker binds the same one)")
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    own_dir = metrics_dir is None
    if own_dir:
        # /metrics on any worker then reports every worker's counters, summed.
        metrics_dir = tempfile.mkdtemp(prefix="stockwire-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    payload = settings.model_dump()
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    stopping = False

    def start(index: int) -> None:
        proc = ctx.Process(target=_worker_main, args=(payload, index), name=f"stockwire-worker-{index}")
        proc.start()
        procs[index] = proc
        started[index] = time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for index in range(n):
            start(index)
        log.info("workers.started", extra={"fields": {"workers": n, "port": settings.port}})
        while procs:
            for index, proc in list(procs.items()):
                proc.join(timeout=0.2)
                if proc.is_alive():
                    continue
                del procs[index]
                if proc.pid is not None:
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(proc.pid)
                if not stopping:
                    log.warning("workers.died", extra={"fields": {"worker": index, "code": proc.exitcode}})
                    if time.monotonic() - started[index] < RESTART_DELAY:
                        time.sleep(RESTART_DELAY)
                    start(index)
    finally:
        if own_dir and metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
