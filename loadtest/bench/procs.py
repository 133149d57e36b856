"""Processes under test: redis-server, the gateway, the raw reference server; /proc readers.

Every process the harness starts gets its RLIMIT_NOFILE raised to the hard
limit (10,000 connections need 10,000 descriptors on each side) and, with
``--pin``, a CPU of its own: the server under test on core 0, everything else
(load generator, publisher, redis-server, py-spy) on core 1, so the server's
figures are per core and not shared with the load that measures it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: A long random-looking secret: the gateway refuses host tokens without one; viewers need none.
JWT_SECRET = "bench-secret-not-for-production-0123456789abcdef"

SERVER_CPU = 0
LOAD_CPU = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def can_pin() -> bool:
    """Pinning needs two CPUs we may run on; otherwise the harness runs unpinned and says so."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return False
    return {SERVER_CPU, LOAD_CPU} <= allowed


def pin_self(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def preexec(cpu: int | None) -> Callable[[], None]:
    """For ``Popen(preexec_fn=...)``: runs in the child between fork and exec."""

    def setup() -> None:
        raise_nofile()
        pin_self(cpu)
        os.setpgrp()  # a Ctrl-C to the harness does not reach the server mid-measurement

    return setup


def pin_pid(pid: int, cpu: int | None) -> None:
    """Pin an already running process (every thread of it)."""
    if cpu is None:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), {cpu})


# -- /proc ------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, in seconds (children not included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (3rd field of the file): utime and stime are the 14th and 15th.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int | str, key: str) -> int:
    """A ``kB`` line of /proc/PID/status: VmRSS (now), VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, dict[str, float]]:
    """Per-CPU seconds by kind (``cpu0`` → user, system, softirq, idle, …) from /proc/stat.

    Loopback TCP does most of its work in softirq context, which is not
    charged to the process that wrote: the server's core is busy with its
    process time *plus* softirq, so both are reported.
    """
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                if out:
                    break
                continue
            name, *values = line.split()
            out[name] = {k: int(v) / CLK_TCK for k, v in zip(_CPU_FIELDS, values, strict=False)}
    return out


def busy_cores(seconds: float = 2.0) -> float:
    """How many cores the machine kept busy over the next ``seconds`` (0.0 … CPU count)."""
    busy0, total0 = machine_busy()
    time.sleep(seconds)
    busy1, total1 = machine_busy()
    cpus = os.cpu_count() or 1
    return cpus * (busy1 - busy0) / max(1e-9, total1 - total0)


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other work keeps fewer than ``threshold`` cores busy.

    Other people's test suites on the same two cores make every figure
    worse; this waits for a lull rather than measuring through it, and
    returns the busy cores seen last so the report says what the load was.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_cores()
        if busy < threshold or time.monotonic() > deadline:
            return round(busy, 2)


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def source_fingerprint() -> dict[str, str]:
    """Which gateway code was measured: a hash of gateway/ and its newest file's mtime.

    The gateway changes under active development; a figure is only
    meaningful next to the code that produced it (no git needed).
    """
    import hashlib

    root = Path(__file__).resolve().parents[2] / "gateway"
    files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".lua") and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    newest = 0.0
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    return {"gateway_sha256": digest.hexdigest()[:16],
            "newest_file_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest))}


def machine() -> dict[str, object]:
    """What the figures were measured on, for the JSON and the doc."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        mem_kb = _meminfo_total()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "loadavg": loadavg(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def _meminfo_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


# -- child processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process and where its output went."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""


def _wait(check: Callable[[], bool], proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.tail()}")
        time.sleep(0.05)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def start_redis(workdir: Path, cpu: int | None) -> tuple[Proc, str]:
    """A redis-server of our own on a free port; returns it and its URL.

    The pub/sub output-buffer limit is lifted: when the server under test
    falls behind, the backlog should show up as staleness in the figures,
    not as Redis cutting the subscriber off (its default is 32 MB).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: run scripts/ensure-redis.sh")
    port = free_port()
    log = workdir / "redis.log"
    popen = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "no", ],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=preexec(cpu),
    )
    proc = Proc("redis-server", popen, log)

    def ping() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    _wait(ping, proc, 10)
    return proc, f"redis://127.0.0.1:{port}/0"


def stockwire_binary() -> str:
    return str(Path(sys.executable).with_name("stockwire"))


_WORKERS_FLAG: bool | None = None


def has_workers_flag() -> bool:
    """``--workers`` is recent; older trees run one process by default and lack the flag."""
    global _WORKERS_FLAG
    if _WORKERS_FLAG is None:
        out = subprocess.run([stockwire_binary(), "serve", "--help"], capture_output=True, text=True,
                             timeout=30, check=False)
        _WORKERS_FLAG = "--workers" in out.stdout
    return _WORKERS_FLAG


def start_gateway(workdir: Path, redis_url: str, cpu: int | None, *, interval: float,
                  extra: tuple[str, ...] = (), gc_trace: Path | None = None) -> tuple[Proc, int]:
    """``stockwire serve`` as one process, with the abuse limits lifted for a load generator.

    The per-address cap and the handshake rate limit protect a node on the
    internet; a benchmark that joins thousands of clients from a few loopback
    addresses would measure those limits instead of the gateway.
    """
    port = free_port()
    args = [stockwire_binary(), "serve"]
    if gc_trace is not None:  # the same CLI, with every collection timed (loadtest/bench/gctrace.py)
        args = [sys.executable, "-m", "loadtest.bench.gctrace", "serve"]
    if has_workers_flag():
        args += ["--workers", "1"]
    args += [
        "--host", "127.0.0.1", "--port", str(port), "--redis-url", redis_url, "--jwt-secret", JWT_SECRET,
        "--interval", str(interval), "--max-connections", "1000000",
        "--max-connections-per-address", "1000000", "--handshake-rate", "1000000",
        "--handshake-burst", "1000000", "--handshake-rate-per-address", "1000000",
        "--handshake-burst-per-address", "1000000", "--drain-window", "0", "--log-level", "warning", *extra,
    ]
    log = workdir / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKWIRE_")}
    if gc_trace is not None:
        env["BENCH_GCTRACE"] = str(gc_trace)
    popen = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                             preexec_fn=preexec(cpu), cwd=Path(__file__).resolve().parents[2])
    proc = Proc("gateway", popen, log)
    _wait(lambda: http_get(f"http://127.0.0.1:{port}/readyz", 0.5)[0] == 200, proc, 30)
    return proc, port


def start_raw(workdir: Path, redis_url: str, room: str, cpu: int | None) -> tuple[Proc, int]:
    """The reference server (:mod:`loadtest.bench.raw`) on the same Redis channel."""
    port = free_port()
    log = workdir / "raw.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "loadtest.bench.raw", "--port", str(port), "--redis-url", redis_url,
         "--room", room],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=preexec(cpu),
        cwd=Path(__file__).resolve().parents[2],
    )
    proc = Proc("raw", popen, log)
    _wait(lambda: http_get(f"http://127.0.0.1:{port}/healthz", 0.5)[0] == 200, proc, 30)
    return proc, port


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of one Prometheus metric (all label sets, all workers)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int) -> str:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics", 5.0)
    return body.decode() if status == 200 else ""


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="stockwire-bench-"))
