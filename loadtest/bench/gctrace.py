"""Run ``stockwire`` with its garbage collections timed: ``python -m loadtest.bench.gctrace serve …``.

Why: a full (generation 2) collection walks every live object — with
thousands of connections that is hundreds of thousands of objects, and the
event loop, hence every client, waits for it.  py-spy shows that time only as
a share of samples; this shows each pause.  It changes nothing in the
gateway: ``gc.callbacks`` times each collection and every one of generation
1 or 2, or longer than 1 ms, is appended to ``$BENCH_GCTRACE`` as
``epoch_s generation seconds collected`` — readable while the gateway runs.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any


def install(path: str) -> None:
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    started = [0.0]
    counts = [0, 0, 0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        seconds = time.perf_counter() - started[0]
        generation = int(info.get("generation", 0))
        counts[generation] += 1
        if generation > 0 or seconds > 0.001:
            out.write(f"{time.time():.3f} {generation} {seconds:.6f} {info.get('collected', 0)}\n")

    gc.callbacks.append(callback)


def summarize(path: str, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
    """Pauses between two epoch times: per generation count, total and longest (ms)."""
    by_gen: dict[int, list[float]] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or not since <= float(parts[0]) <= until:
                    continue
                by_gen.setdefault(int(parts[1]), []).append(float(parts[2]) * 1000)
    except OSError:
        return {}
    return {
        f"gen{gen}": {"count": len(v), "total_ms": round(sum(v), 1), "max_ms": round(max(v), 1)}
        for gen, v in sorted(by_gen.items())
    }


def main() -> None:
    path = os.environ.get("BENCH_GCTRACE")
    if path:
        install(path)
    from gateway.cli import main as cli

    sys.exit(cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
