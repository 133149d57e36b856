"""``python -m loadtest.bench SCENARIO``: run, repeat, take medians, check targets, write JSON + PNG.

    python -m loadtest.bench fanout --pin --runs 3      # gateway and raw ceiling, alternating
    python -m loadtest.bench latency --pin --runs 3
    python -m loadtest.bench surge --pin --profile      # with py-spy on the gateway
    python -m loadtest.bench all --pin                  # every scenario, a summary table at the end
    python -m loadtest.bench all --quick                # seconds, 50-200 clients: the smoke test

Results land in ``results/bench/<scenario>-<timestamp>.json`` (plus PNG
plots next to it); ``results/`` is gitignored.  The exit code is 0 when the
runs completed (targets missed included: a miss is a figure, not a crash),
1 when a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from loadtest.bench import plots, procs
from loadtest.bench.rig import Config
from loadtest.bench.scenarios import SCENARIOS

ORDER = ("fanout", "latency", "surge", "idle", "join", "ingest")

#: Full-size runs: the figures docs/benchmarks.md reports.
DEFAULTS: dict[str, dict[str, Any]] = {
    "fanout": {"clients": 5000, "duration": 20.0, "warmup": 3.0, "skus": 10, "sample_every": 50,
               "targets": ["gateway", "raw"]},
    "latency": {"clients": 5000, "duration": 30.0, "rates": [1.0, 20.0], "skus": 10, "sample_every": 10,
                "targets": ["gateway", "raw"]},
    "surge": {"clients": 5000, "duration": 30.0, "rates": [20000.0], "skus": 50, "sample_every": 50,
              "targets": ["gateway"]},
    "idle": {"clients": 10000, "duration": 5.0, "skus": 50, "targets": ["gateway", "raw"]},
    "join": {"clients": 5000, "skus": 50, "targets": ["gateway", "raw"]},
    "ingest": {"clients": 1, "duration": 10.0, "skus": 50, "via": ["script", "spublish"],
               "targets": ["gateway"]},
}
#: ``--quick``: the same code paths in a few seconds each (tests/loadtest/test_bench_smoke.py).
QUICK: dict[str, dict[str, Any]] = {
    "fanout": {"clients": 50, "duration": 1.5, "warmup": 0.5, "sample_every": 5},
    "latency": {"clients": 50, "duration": 1.5, "sample_every": 5, "targets": ["gateway"]},
    "surge": {"clients": 50, "duration": 2.0, "rates": [2000.0], "sample_every": 5},
    "idle": {"clients": 100, "duration": 0.5},
    "join": {"clients": 100},
    "ingest": {"duration": 1.5, "max_ahead": 10_000},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=[*ORDER, "all"])
    p.add_argument("--quick", action="store_true", help="scale everything down to seconds (smoke test)")
    p.add_argument("--pin", action="store_true",
                   help="server under test on CPU 0; load generator, publisher, redis-server on CPU 1")
    p.add_argument("--runs", type=int, default=1, help="repeat and report medians (targets alternate)")
    p.add_argument("--target", choices=("gateway", "raw", "both"), default=None,
                   help="what to measure (default per scenario: fanout, idle, join run both)")
    p.add_argument("--clients", type=int, help="connections")
    p.add_argument("--duration", type=float, help="seconds of measurement (per rate for latency)")
    p.add_argument("--warmup", type=float, help="fanout: seconds of load before measuring")
    p.add_argument("--rate", type=float, action="append", dest="rates",
                   help="updates/s; repeat for several phases (latency)")
    p.add_argument("--skus", type=int, help="SKUs the updates rotate over")
    p.add_argument("--interval", type=float, help="gateway --interval (default 0.1; fanout uses 0)")
    p.add_argument("--window", type=int, help="fanout: updates in flight in the closed loop (default 8)")
    p.add_argument("--sample-every", type=int, help="every k-th client decodes every frame (latency)")
    p.add_argument("--per-address", type=int, help="connections per loopback source address (1000)")
    p.add_argument("--join-concurrency", type=int, help="handshakes in flight (default 50)")
    p.add_argument("--via", choices=("script", "spublish", "both"), help="ingest: how updates are published")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway during the measurement")
    p.add_argument("--gc-trace", action="store_true",
                   help="time every garbage collection of the gateway (loadtest/bench/gctrace.py)")
    p.add_argument("--results", type=Path, default=Path("results/bench"), help="output folder")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet-below", type=float, default=None, metavar="CORES",
                   help="before each run, wait until other work uses fewer than CORES cores")
    p.add_argument("--quiet-wait", type=float, default=600.0,
                   help="longest wait for --quiet-below, seconds (then run anyway, and say so)")
    return p


def resolve(args: argparse.Namespace, scenario: str, stamp: str) -> tuple[Config, list[str]]:
    values: dict[str, Any] = dict(DEFAULTS[scenario])
    if args.quick:
        values.update(QUICK[scenario])
    targets = values.pop("targets")
    for name in ("clients", "duration", "warmup", "rates", "skus", "interval", "window", "sample_every",
                 "per_address", "join_concurrency"):
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    if args.via is not None:
        values["via"] = ["script", "spublish"] if args.via == "both" else [args.via]
    if args.target is not None:
        targets = ["gateway", "raw"] if args.target == "both" else [args.target]
    if scenario == "ingest":
        targets = ["gateway"]
    cfg = Config(scenario=scenario, quick=args.quick, pin=args.pin, profile=args.profile,
                 gc_trace=args.gc_trace, results=args.results, stamp=stamp, **values)
    if args.quick:
        cfg = replace(cfg, final_timeout=15.0)
    return cfg, targets


def budget(cfg: Config) -> float:
    """A run's hard time limit: its own duration plus generous set-up and tear-down."""
    phases = max(1, len(cfg.rates)) * cfg.duration * max(1, len(cfg.via))
    return phases + cfg.warmup + 2 * cfg.final_timeout + cfg.clients / 200 + 60


def run_once(cfg: Config, target: str) -> dict[str, Any]:
    from gateway.cli import run

    return run(asyncio.wait_for(SCENARIOS[cfg.scenario](cfg, target), budget(cfg)))  # type: ignore[no-any-return]


# -- medians and targets -----------------------------------------------------------------

_SKIP = {"series", "latency_series", "profile", "steps", "failures", "errors"}


def median_of(runs: list[Any]) -> Any:
    """Field by field median of several runs' dicts (numbers only; lists of phases by position)."""
    first = runs[0]
    if isinstance(first, dict):
        out = {}
        for key in first:
            if key in _SKIP:
                continue
            values = [r.get(key) for r in runs if isinstance(r, dict) and key in r]
            if values and len(values) == len(runs):
                merged = median_of(values)
                if merged is not None:
                    out[key] = merged
        return out
    if isinstance(first, bool):
        return all(runs)
    if isinstance(first, (int, float)):
        numbers = [r for r in runs if isinstance(r, (int, float))]
        return statistics.median(numbers) if len(numbers) == len(runs) else None
    if isinstance(first, list) and first and all(isinstance(r, list) and len(r) == len(first) for r in runs):
        return [median_of([r[i] for r in runs]) for i in range(len(first))]
    if isinstance(first, str) and all(r == first for r in runs):
        return first
    return None


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(d, dict):
            d = d.get(key)
        elif isinstance(d, list) and isinstance(key, int) and -len(d) <= key < len(d):
            d = d[key]
        else:
            return None
    return d


def _row(number: int, name: str, target: str, value: Any, ok: bool | None, measured: str) -> dict[str, Any]:
    return {"target_no": number, "name": name, "target": target, "value": value, "measured": measured,
            "pass": ok}


def targets_for(scenario: str, med: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's six targets, from the medians (None where not measured)."""
    gw = med.get("gateway", {})
    rows = []
    if scenario == "fanout" and gw:
        g, r = _get(gw, "window", "frames_per_s"), _get(med, "raw", "window", "frames_per_s")
        ratio = round(g / r, 3) if g and r else None
        clients = int(_get(gw, "clients") or 0)
        rows.append(_row(1, f"fan-out vs raw ceiling, {clients:,} clients", ">= 85%", ratio,
                         ratio >= 0.85 if ratio is not None else None,
                         f"{g:,.0f} vs {r:,.0f} frames/s = {100 * ratio:.1f}%" if ratio else f"{g} frames/s"))
    elif scenario == "latency":
        for phase in gw.get("phases", []):
            rate, p99 = phase.get("rate"), _get(phase, "latency_ms", "p99")
            limit = 50 if rate is not None and rate <= 1 else 150
            rows.append(_row(2, f"latency p99 at {rate:g} update/s", f"<= {limit} ms", p99,
                             p99 <= limit if p99 is not None else None, f"{p99} ms"))
    elif scenario == "surge" and gw:
        stale = _get(gw, "staleness_ms", "p99")
        final = _get(gw, "final", "ms", "max")
        reached = _get(gw, "final", "all_reached")
        flat = _get(gw, "rss", "flat")
        growth = _get(gw, "rss", "growth_mb")
        rows.append(_row(3, "surge p99 staleness", "<= 250 ms", stale,
                         stale <= 250 if stale is not None else None, f"{stale} ms"))
        rows.append(_row(3, "surge: every client on the final state", "<= 300 ms", final,
                         bool(reached) and final is not None and final <= 300,
                         f"{final} ms (all reached: {reached})"))
        rows.append(_row(3, "surge: gateway RSS flat", "flat", growth, flat, f"{growth} MB growth"))
    elif scenario == "idle" and gw:
        kb = _get(gw, "kb_per_connection")
        connections = int(_get(gw, "connections") or 0)
        rows.append(_row(4, f"memory per idle connection at {connections:,}", "<= 20 KB", kb,
                         kb <= 20 if kb is not None else None, f"{kb} KB"))
    elif scenario == "join" and gw:
        rate = _get(gw, "join", "per_s")
        rows.append(_row(5, "new connections/s incl. snapshot", ">= 2,000/s", rate,
                         rate >= 2000 if rate is not None else None, f"{rate}/s"))
    elif scenario == "ingest":
        for mode in gw.get("modes", []):
            rate = mode.get("received_per_s")
            rows.append(_row(6, f"ingest per worker (via {mode.get('via')})", ">= 50,000/s", rate,
                             rate >= 50000 if rate is not None else None, f"{rate}/s"))
    return rows


# -- plots ----------------------------------------------------------------------------------


def representative(runs: list[dict[str, Any]], path: tuple[Any, ...]) -> dict[str, Any]:
    """The run whose key figure is the median one: its time series are the ones plotted."""
    keyed = [(_get(r, *path) or 0, i) for i, r in enumerate(runs)]
    keyed.sort()
    return runs[keyed[len(keyed) // 2][1]]


KEY = {"fanout": ("window", "frames_per_s"), "latency": ("phases", -1, "latency_ms", "p99"),
       "surge": ("staleness_ms", "p99"), "idle": ("kb_per_connection",), "join": ("join", "per_s"),
       "ingest": ("modes", 0, "received_per_s")}


def make_plots(cfg: Config, runs: dict[str, list[dict[str, Any]]], base: Path) -> list[str]:
    if not plots.available():
        return []
    reps = {t: representative(rs, KEY[cfg.scenario]) for t, rs in runs.items() if rs}
    out: list[Path] = []
    title = f"{cfg.scenario}"
    if cfg.scenario in ("fanout", "latency", "surge"):
        clients = next(iter(reps.values())).get("clients")
        title += f", {clients:,} clients" if clients else ""
        out.append(plots.latency(base.with_name(base.name + "-latency.png"), f"{title}: latency",
                                 {t: r.get("latency_series", []) for t, r in reps.items()}))
        out.append(plots.rate(base.with_name(base.name + "-rate.png"), f"{title}: delivered",
                              {t: r.get("series", []) for t, r in reps.items()},
                              second=("published_per_s", "updates published / s")))
    if cfg.scenario == "surge" and "gateway" in reps:
        series = reps["gateway"].get("series", [])
        stale = [p for p in series if "stale_p99" in p]
        if stale:
            out.append(plots.lines(base.with_name(base.name + "-staleness.png"), f"{title}: staleness",
                                   stale, [("stale_p50", "p50"), ("stale_p99", "p99"), ("stale_max", "max")],
                                   "newest published − newest seen (ms)"))
        rss = [p for p in series if "rss_mb" in p]
        if rss:
            out.append(plots.lines(base.with_name(base.name + "-rss.png"), f"{title}: gateway RSS", rss,
                                   [("rss_mb", "RSS (MB)")], "MB"))
    if cfg.scenario == "ingest" and "gateway" in reps:
        modes = reps["gateway"].get("modes", [])
        out.append(plots.rate(base.with_name(base.name + "-rate.png"), "ingest: published vs received",
                              {m["via"]: m.get("series", []) for m in modes}, key="received_per_s",
                              ylabel="gateway updates received / s",
                              second=("published_per_s", "updates published / s")))
    if cfg.scenario == "idle":
        pts = {t: [{"t": s["connections"], "rss_mb": s["rss_kb"] / 1024} for s in r.get("steps", [])]
               for t, r in reps.items()}
        out.append(plots.rate(base.with_name(base.name + "-rss.png"), "idle: RSS vs connections", pts,
                              key="rss_mb", ylabel="server RSS (MB)"))
    return [str(p) for p in out]


# -- main ---------------------------------------------------------------------------------


def run_scenario(args: argparse.Namespace, scenario: str, stamp: str) -> dict[str, Any]:
    cfg, targets = resolve(args, scenario, stamp)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    failures: list[str] = []
    machine = procs.machine()
    started = time.time()
    for i in range(max(1, args.runs)):
        for target in targets:
            before = None
            if args.quiet_below is not None:
                before = procs.wait_quiet(args.quiet_below, args.quiet_wait)
            print(f"[bench] {scenario} run {i + 1}/{args.runs} {target} "
                  f"(load {procs.loadavg()[0]:.2f}, busy cores before {before})", flush=True)
            try:
                result = run_once(cfg, target)
            except Exception as exc:
                failures.append(f"{target} run {i + 1}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
                continue
            result["loadavg_after"] = procs.loadavg()
            result["busy_cores_before"] = before
            runs[target].append(result)
            print(f"[bench]   {_headline(scenario, result)}", flush=True)
    medians = {t: median_of(rs) for t, rs in runs.items() if rs}
    report = {
        "scenario": scenario,
        "timestamp": stamp,
        "seconds": round(time.time() - started, 1),
        "machine": machine,
        "source": procs.source_fingerprint(),
        "pinned": cfg.pin,
        "workers_flag": procs.has_workers_flag(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "targets": targets_for(scenario, medians),
        "median": medians,
        "runs": runs,
        "failures": failures,
    }
    if scenario == "fanout" and "gateway" in medians and "raw" in medians:
        g = _get(medians, "gateway", "window", "frames_per_s")
        r = _get(medians, "raw", "window", "frames_per_s")
        report["ceiling_ratio"] = round(g / r, 3) if g and r else None
        # The same comparison per second of server CPU: holds even when a run did not get a whole core.
        g = _get(medians, "gateway", "window", "frames_per_server_cpu_s")
        r = _get(medians, "raw", "window", "frames_per_server_cpu_s")
        report["ceiling_ratio_per_cpu_s"] = round(g / r, 3) if g and r else None
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.results / f"{scenario}-{stamp}"
    if not args.no_plots and any(runs.values()):
        try:
            report["plots"] = make_plots(cfg, {t: rs for t, rs in runs.items() if rs}, base)
        except Exception as exc:  # a plot must never cost the figures
            report["plots_error"] = f"{type(exc).__name__}: {exc}"
    path = base.with_suffix(".json")
    path.write_text(json.dumps(report, indent=1, default=str))
    report["path"] = str(path)
    print(f"[bench] wrote {path}", flush=True)
    return report


def _headline(scenario: str, r: dict[str, Any]) -> str:
    if scenario == "fanout":
        w = r["window"]
        return (f"{w['frames_per_s']:,.0f} frames/s ({w['published_per_s']:.0f} flushes/s), "
                f"server cpu {w['server_cpu']:.2f}, loadgen cpu {w['loadgen_cpu']:.2f}, "
                f"final {r['final']['ms'].get('max')} ms")
    if scenario == "latency":
        return "; ".join(f"{p['rate']:g}/s p99 {p['latency_ms'].get('p99')} ms" for p in r["phases"])
    if scenario == "surge":
        return (f"staleness p99 {r['staleness_ms'].get('p99')} ms, "
                f"final max {r['final']['ms'].get('max')} ms, server cpu {r['window']['server_cpu']:.2f}, "
                f"rss growth {r['rss'].get('growth_mb')} MB")
    if scenario == "idle":
        return f"{r['connections']} connections, {r['kb_per_connection']} KB each"
    if scenario == "join":
        return f"{r['join']['per_s']:,.0f} joins/s ({r['join']['joined']}/{r['join']['requested']})"
    if scenario == "ingest":
        return "; ".join(f"{m['via']}: published {m['published_per_s']:,.0f}/s, received "
                         f"{m['received_per_s']:,.0f}/s" for m in r["modes"])
    return ""


def print_table(reports: list[dict[str, Any]]) -> None:
    print("\n| # | target | goal | measured | pass |\n|---|---|---|---|---|")
    for report in reports:
        for row in report["targets"]:
            mark = {True: "yes", False: "NO", None: "n/a"}[row["pass"]]
            print(f"| {row['target_no']} | {row['name']} | {row['target']} | {row['measured']} | {mark} |")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    procs.raise_nofile()
    if args.pin:
        # Decided once, before this process pins itself (after that it sees only CPU 1).
        args.pin = procs.can_pin()
        if args.pin:
            procs.pin_self(procs.LOAD_CPU)
        else:
            print("[bench] --pin needs CPUs 0 and 1; running unpinned", file=sys.stderr)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scenarios = list(ORDER) if args.scenario == "all" else [args.scenario]
    reports = [run_scenario(args, s, stamp) for s in scenarios]
    print_table(reports)
    if args.scenario == "all":
        summary = args.results / f"all-{stamp}.json"
        summary.write_text(json.dumps({"timestamp": stamp, "reports": [r["path"] for r in reports],
                                       "targets": [row for r in reports for row in r["targets"]]}, indent=1))
        print(f"[bench] wrote {summary}")
    return 1 if any(r["failures"] for r in reports) else 0
