"""Fault-test helpers: real gateway processes, tracked SDK clients, metrics and timings.

Every scenario here runs against real ``redis-server`` processes (the
``own_redis`` fixture of ``tests/conftest.py``) and real ``stockwire serve``
processes started by :class:`GatewayNode`, which can SIGTERM (drain), SIGKILL
and restart a node on the same port.  Tests print what they measured; run them
with ``-s`` to see the figures quoted in ``docs/operations.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from clients.client import Snapshot, StockClient, StockClientError, Update
from clients.publisher import Publisher, Status
from gateway.settings import Settings
from tests.conftest import JWT_SECRET, free_port

# -- process limits ------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit.

    Also used as the gateway subprocesses' ``preexec_fn`` (what ``prlimit`` would do).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.fixture(scope="session", autouse=True)
def _open_files_limit() -> int:
    return raise_nofile_limit()


# -- HTTP and metrics ---------------------------------------------------------------------


async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """A minimal HTTP/1.1 GET over a raw stream: (status, body)."""

    async def get() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, body.decode("utf-8", "replace")

    return await asyncio.wait_for(get(), timeout)


class Samples:
    """One /metrics scrape: ``value(name, **labels)`` sums the matching samples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    def value(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == w for k, w in labels.items()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for n, lab, v in self.samples:
            if n == name and label in lab:
                out[lab[label]] += v
        return dict(out)

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}


# -- gateway processes -----------------------------------------------------------------------


def stockwire_command() -> list[str]:
    """The installed ``stockwire`` entry point of this interpreter's environment."""
    script = Path(sys.executable).parent / "stockwire"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "gateway.cli"]  # pragma: no cover - uninstalled checkout


class GatewayNode:
    """One gateway node (``stockwire serve``) on a fixed port: start, drain, kill, restart.

    ``flags`` are ``stockwire serve`` flags (``{"drain_window": 2}`` becomes
    ``--drain-window 2``); the JWT secret travels in the environment, as it
    would in a deployment.  ``workers`` pins ``--workers`` (default 1: one
    process per node, so signals, RSS and CPU are that process's); with more,
    the node is a supervisor and its workers.  The node runs in its own session:
    SIGKILL and SIGSTOP go to every process of it (a container or host dying,
    a node frozen), SIGTERM to the main process (which forwards it to workers).
    """

    def __init__(self, redis_url: str, logdir: Path, name: str = "node", *,
                 port: int | None = None, workers: int | None = 1, **flags: object) -> None:
        self.redis_url = redis_url
        self.name = name
        self.port = port or free_port()
        self.flags: dict[str, object] = {"interval": 0.1, "room_grace": 1, **flags}
        if workers is not None and "workers" in Settings.model_fields:
            self.flags["workers"] = workers
        self.logfile = logdir / f"gateway-{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def argv(self) -> list[str]:
        args = [*stockwire_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--redis-url", self.redis_url]
        for key, value in self.flags.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        return args

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("STOCKWIRE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env["STOCKWIRE_JWT_SECRET"] = JWT_SECRET
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def start(self, *, ready: bool = True, timeout: float = 20.0) -> GatewayNode:
        """Start the process and wait for /healthz (and /readyz unless ``ready=False``)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.starts += 1
        with self.logfile.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.argv())}\n".encode())
            # Popen returns at once; asyncio's subprocess API would tie the child to this loop.
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                self.argv(), env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=raise_nofile_limit, start_new_session=True,
            )
        await self.wait_for_http("/healthz", timeout)
        if ready:
            await self.wait_for_http("/readyz", timeout)
        return self

    async def wait_for_http(self, path: str, timeout: float = 20.0, status: int = 200) -> float:
        """Poll ``path`` until it answers ``status``; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"gateway {self.name} exited:\n{self.log()}")
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                if (await http_get(self.port, path, timeout=2.0))[0] == status:
                    return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway {self.name}: {path} never answered {status}\n{self.log()}")
            await asyncio.sleep(0.02)

    def pids(self) -> list[int]:
        """Every live process of the node (its process group)."""
        if self.proc is None:
            return []
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # pgrp; skip zombies
                out.append(int(entry.name))
        return out

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process."""
        assert self.proc is not None, f"{self.name} was never started"
        assert self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(sig)

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every process of the node."""
        assert self.proc is not None, f"{self.name} was never started"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """SIGTERM: the node drains (1012 closes spread over --drain-window), then exits."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to every process: the node vanishes without a word to its clients."""
        self.signal_all(signal.SIGKILL)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait until the main process and all its workers are gone; its exit code."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None or self.pids():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway {self.name} did not exit")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    async def restart(self, **kwargs: Any) -> GatewayNode:
        """Start again on the same port (after it exited)."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
            await self.wait_exit()
        return await self.start(**kwargs)

    def cleanup(self) -> None:
        if self.proc is not None:
            self.signal_all(signal.SIGCONT)
            self.signal_all(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def rss_bytes(self) -> int:
        """Resident set size of the node (all its processes), from /proc/PID/status VmRSS."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the node's live processes, from /proc/PID/stat."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    async def metrics(self) -> Samples:
        status, body = await http_get(self.port, "/metrics", timeout=10.0)
        assert status == 200
        return Samples(body)

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture
def gateway_nodes(tmp_path: Path) -> Iterator[Callable[..., GatewayNode]]:
    """Factory of :class:`GatewayNode`; every node still running is killed at teardown."""
    made: list[GatewayNode] = []

    def make(redis_url: str, name: str = "node", **flags: object) -> GatewayNode:
        node = GatewayNode(redis_url, tmp_path, f"{name}{len(made)}", **flags)
        made.append(node)
        return node

    yield make
    for node in made:
        node.cleanup()


# -- SDK clients with a record of what they showed ----------------------------------------------


class RecordingRandom(random.Random):
    """The client's rng: remembers every backoff delay it drew, with when it drew it."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self.draws: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        value = super().uniform(a, b)
        self.draws.append((time.monotonic(), value))
        return value


class TrackedClient(StockClient):
    """A :class:`StockClient` that records, through its public API only:

    - ``shown``: every (ver, qty) it displayed per SKU, in order (snapshot and update callbacks);
    - ``timeline``: (monotonic time, "open"/"close", close code) for every connection change;
    - ``rng.draws``: the reconnect delays it chose;
    - ``snapshots_at``: when (monotonic) each snapshot was applied: a screen shows
      the room again from then on, not from the handshake;
    - ``latencies``: (publish ms, publish-to-receive ms) of every applied update
      item while ``record_latency`` is set; the publish time lets a test cut a
      run into windows.
    """

    def __init__(self, url: str | Sequence[str], room: str, **kwargs: Any) -> None:
        self.rng = RecordingRandom(kwargs.pop("seed", None))
        self.shown: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.latencies: list[tuple[int, int]] = []
        self.snapshots_at: list[float] = []
        self.timeline: list[tuple[float, str, int | None]] = []
        self.record_latency = False
        super().__init__(url, room, rng=self.rng, on_snapshot=self._shown_snapshot,
                         on_update=self._shown_update, **kwargs)
        self._monitor: asyncio.Task[None] | None = None

    def _shown_snapshot(self, event: Snapshot) -> None:
        self.snapshots_at.append(time.monotonic())
        for item in event.items:
            self.shown[item["sku"]].append((item["ver"], item["qty"]))

    def _shown_update(self, event: Update) -> None:
        for item in event.items:
            self.shown[item["sku"]].append((item["ver"], item["qty"]))
        if self.record_latency:
            self.latencies.extend((event.received_ms - ms, ms) for ms in event.latencies_ms.values())

    async def __aenter__(self) -> TrackedClient:
        await super().__aenter__()
        self._monitor = asyncio.create_task(self._watch_connection())
        return self

    async def close(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await super().close()

    async def _watch_connection(self) -> None:
        # wait_for wakes after every connection change; if several happened
        # before this task ran, the counters still tell how many.
        connected, connects = False, 0

        def changed(c: StockClient) -> bool:
            return c.connected != connected or c.connects != connects

        while not self.stopped:
            try:
                await self.wait_for(changed, timeout=None)
            except StockClientError:
                return
            now, opens = time.monotonic(), self.connects - connects
            if connected and (opens > 0 or not self.connected):
                self.timeline.append((now, "close", self.last_close_code))
            for i in range(opens):
                self.timeline.append((now, "open", None))
                if i < opens - 1 or not self.connected:
                    self.timeline.append((now, "close", self.last_close_code))
            connected, connects = self.connected, self.connects

    def backwards(self) -> list[str]:
        """SKUs whose displayed version ever went down, with the offending sequence."""
        out = []
        for sku, shown in self.shown.items():
            versions = [ver for ver, _ in shown]
            if any(b < a for a, b in itertools.pairwise(versions)):
                out.append(f"{sku}: {versions}")
        return out

    def restocked(self) -> list[str]:
        """SKUs whose displayed quantity ever went up (only sales happen in these tests)."""
        out = []
        for sku, shown in self.shown.items():
            qtys = [qty for _, qty in shown]
            if any(b > a for a, b in itertools.pairwise(qtys)):
                out.append(f"{sku}: {shown}")
        return out

    @property
    def synced(self) -> bool:
        """Connected and holding this connection's snapshot."""
        return self.connected and self.view.synced

    def state(self) -> dict[str, tuple[int, int]]:
        return {sku: (item["qty"], item["ver"]) for sku, item in self.items.items()}

    def outages(self) -> list[tuple[float, float, int | None]]:
        """(closed at, reopened at or inf, close code) for every gap between connections."""
        gaps = []
        closed: tuple[float, int | None] | None = None
        for at, kind, code in self.timeline:
            if kind == "close":
                closed = (at, code)
            elif closed is not None:
                gaps.append((closed[0], at, closed[1]))
                closed = None
        if closed is not None:
            gaps.append((closed[0], float("inf"), closed[1]))
        return gaps


@contextlib.asynccontextmanager
async def tracked_clients(specs: Sequence[tuple[Sequence[str], dict[str, Any]]],
                          room: str) -> AsyncIterator[list[TrackedClient]]:
    """Open one :class:`TrackedClient` per (urls, kwargs); close them all on exit."""
    clients: list[TrackedClient] = []
    try:
        for urls, kwargs in specs:
            client = TrackedClient(list(urls), room, **kwargs)
            await client.__aenter__()
            clients.append(client)
        yield clients
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# -- a stock service ---------------------------------------------------------------------------


class Seller:
    """A stock service selling one unit at a time across ``skus``, tolerating Redis errors."""

    def __init__(self, redis_url: str, room: str, skus: Sequence[str], *, pause: float = 0.005,
                 seed: int = 0) -> None:
        self.redis_url = redis_url
        self.room = room
        self.skus = list(skus)
        self.pause = pause
        self.rng = random.Random(seed)
        self.sales = self.errors = 0

    async def seed(self, qty: int = 1_000_000, **fields: Any) -> None:
        async with Publisher(self.redis_url) as pub:
            for sku in self.skus:
                result = await pub.set(self.room, sku, qty, initial=qty, **fields)
                assert result.status is Status.OK, result

    async def run(self, stop: asyncio.Event) -> None:
        async with Publisher(self.redis_url) as pub:
            while not stop.is_set():
                try:
                    result = await pub.adjust(self.room, self.rng.choice(self.skus), -1)
                    self.sales += result.status is Status.OK
                except (RedisError, OSError):
                    self.errors += 1
                await asyncio.sleep(self.pause)

    async def truth(self) -> dict[str, tuple[int, int]]:
        async with Publisher(self.redis_url) as pub:
            return {sku: (r["qty"], r["ver"]) for sku, r in (await pub.stock(self.room)).items()}


# -- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    return (f"n={len(values)} p50={percentile(values, 50):.1f} p99={percentile(values, 99):.1f} "
            f"max={max(values):.1f} mean={statistics.fmean(values):.1f}")


def report(title: str, **figures: object) -> None:
    """Print a test's measured figures on one block (visible with ``pytest -s``)."""
    lines = [f"\n[faults] {title}"]
    lines += [f"  {key.replace('_', ' ')}: {value}" for key, value in figures.items()]
    print("\n".join(lines), flush=True)


async def until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Poll ``predicate`` until true; returns the seconds it took, TimeoutError past ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - started
