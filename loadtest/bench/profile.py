"""py-spy on the server under test, and a summary of where its samples went.

``py-spy record --nonblocking`` reads the target's memory without stopping
it, so the profile costs the load generator's core, not the gateway's (py-spy
is pinned next to the load generator).  The raw (collapsed-stack) output is
summarised here into the functions with the most samples, by self time (the
function was on top of the stack) and inclusive time (anywhere on it), so the
JSON and docs/benchmarks.md can name hot paths without a flame-graph viewer.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loadtest.bench.procs import preexec


def py_spy_binary() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profiler:
    """One ``py-spy record`` run over a measurement window."""

    def __init__(self, pid: int, out: Path, duration: float, cpu: int | None, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.duration = duration
        self.rate = rate
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""
        self.started = 0.0

    def start(self) -> bool:
        binary = py_spy_binary()
        if binary is None:
            self.error = "py-spy not installed (.venv/bin/pip install py-spy)"
            return False
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "record", "--pid", str(self.pid), "--duration", str(max(1, round(self.duration))),
             "--rate", str(self.rate), "--format", "raw", "--nonblocking", "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec(self.cpu),
        )
        return True

    def finish(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop sampling now (SIGINT makes py-spy write what it has) and summarise."""
        if self.proc is None:
            return {"error": self.error}
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            return {"error": err.decode(errors="replace")[-500:]}
        elapsed = time.monotonic() - self.started
        summary = summarize(self.out.read_text(), min(self.duration, elapsed) * self.rate)
        summary["collapsed"] = str(self.out)
        return summary

    @property
    def pid_of_profiler(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def _short(frame: str) -> str:
    """``flush (gateway/hub.py:290)`` → ``hub.py:flush``; line numbers vary between runs."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for anchor in ("gateway", "websockets", "redis", "msgpack", "asyncio", "uvloop", "clients",
                   "prometheus_client"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor):])
            break
    else:
        path = Path(path).name
    return f"{path}:{name}" if path else name


def summarize(collapsed: str, expected_samples: float, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")[1:] or stack.split(";")]  # drop the thread name
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "pct": round(100 * n / total, 1)} for name, n in counter.most_common(top)]

    return {
        "samples": total,
        # Samples in which the interpreter was busy vs the number taken: py-spy skips idle ones.
        "busy_pct": round(100 * total / expected_samples, 1) if expected_samples else None,
        "self": share(own) if total else [],
        "inclusive": share(inclusive) if total else [],
    }
