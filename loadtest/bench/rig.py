"""One run's setup: redis-server, the server under test, the publisher, the fleet; and its meters.

A run starts from nothing (its own redis-server on a free port, a fresh
gateway or raw server) so that runs do not inherit each other's heap, Redis
backlog or TIME_WAIT sockets, and tears everything down when it ends, even
on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from loadtest.bench import gctrace, procs
from loadtest.bench.profile import Profiler
from loadtest.bench.publisher import Resp, StockPublisher, open_resp
from loadtest.bench.wsclient import Fleet, percentiles

ROOM = "bench"
#: Gateway counters worth keeping with every run (Prometheus names, summed over labels).
GATEWAY_COUNTERS = (
    "stockwire_updates_received_total", "stockwire_updates_merged_total",
    "stockwire_updates_discarded_total", "stockwire_messages_dropped_total",
    "stockwire_frames_encoded_total", "stockwire_frames_sent_total",
    "stockwire_slow_client_skips_total", "stockwire_client_closes_total",
    "stockwire_redis_reconnects_total",
)


@dataclass
class Config:
    """Everything a scenario needs to know, resolved from defaults, ``--quick`` and flags."""

    scenario: str
    quick: bool = False
    pin: bool = False
    clients: int = 5000
    duration: float = 20.0
    warmup: float = 3.0
    rates: list[float] = field(default_factory=list)
    skus: int = 10
    interval: float = 0.1
    window: int = 8
    sample_every: int = 50
    per_address: int = 1000
    join_concurrency: int = 50
    final_timeout: float = 30.0
    #: ingest: most published updates the gateway may be behind (bounds Redis's backlog).
    max_ahead: int = 50_000
    via: list[str] = field(default_factory=lambda: ["script"])
    profile: bool = False
    gc_trace: bool = False
    results: Path = Path("results/bench")
    stamp: str = ""

    @property
    def server_cpu(self) -> int | None:
        return procs.SERVER_CPU if self.pin else None

    @property
    def load_cpu(self) -> int | None:
        return procs.LOAD_CPU if self.pin else None


class Rig:
    """Processes and clients of one run; ``async with`` starts and always stops them."""

    def __init__(self, cfg: Config, target: str, *, interval: float | None = None,
                 mode: str = "script") -> None:
        self.cfg = cfg
        self.target = target
        self.interval = cfg.interval if interval is None else interval
        self.mode = mode
        self.dir = procs.workdir()
        self.redis: procs.Proc | None = None
        self.redis_url = ""
        self.server: procs.Proc | None = None
        self.port = 0
        self.resp: Resp | None = None
        self.pub: StockPublisher = None  # type: ignore[assignment]
        self.fleet: Fleet = None  # type: ignore[assignment]
        self.profiler: Profiler | None = None
        self.skus = [f"sku-{i:03d}" for i in range(cfg.skus)]
        self.gc_path = self.dir / "gc.log" if cfg.gc_trace and target == "gateway" else None

    async def __aenter__(self) -> Rig:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is not None and self.server is not None:
            log = self.server.tail(3000)
            if log.strip():
                print(f"--- {self.server.name} log (tail) ---\n{log}", flush=True)
        await self._stop()

    async def _start(self) -> None:
        cfg = self.cfg
        self.redis, self.redis_url = procs.start_redis(self.dir, cfg.load_cpu)
        self.resp = await open_resp(self.redis_url)
        self.pub = StockPublisher(self.resp, ROOM, self.skus, mode="script")
        await self.pub.prepare()
        if self.target == "gateway":
            self.server, self.port = procs.start_gateway(self.dir, self.redis_url, cfg.server_cpu,
                                                         interval=self.interval, gc_trace=self.gc_path)
        else:
            self.server, self.port = procs.start_raw(self.dir, self.redis_url, ROOM, cfg.server_cpu)
        self.fleet = Fleet("127.0.0.1", self.port, f"/ws/{ROOM}", sample_every=cfg.sample_every,
                           per_address=cfg.per_address)

    async def _stop(self) -> None:
        if self.profiler is not None:
            self.profiler.kill()
        if self.fleet is not None:
            self.fleet.close()
            await asyncio.sleep(0.2)
        if self.server is not None:
            self.server.stop()
        if self.resp is not None and self.resp.transport is not None:
            self.resp.transport.close()
        if self.redis is not None:
            self.redis.stop(grace=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------

    def check_alive(self) -> None:
        assert self.server is not None
        if not self.server.alive():
            raise RuntimeError(f"{self.server.name} died (exit {self.server.popen.returncode}):\n"
                               f"{self.server.tail()}")

    async def metrics(self) -> dict[str, float]:
        """The gateway's own counters (empty for the raw server, which has none)."""
        if self.target != "gateway":
            return {}
        text = await asyncio.to_thread(procs.scrape, self.port)
        return {name: procs.metric_sum(text, name) for name in GATEWAY_COUNTERS}

    async def received(self) -> float:
        text = await asyncio.to_thread(procs.scrape, self.port)
        return procs.metric_sum(text, "stockwire_updates_received_total")

    def server_memory(self) -> dict[str, int]:
        assert self.server is not None
        pid = self.server.pid
        return {"rss_kb": procs.status_kb(pid, "VmRSS"), "hwm_kb": procs.status_kb(pid, "VmHWM")}

    def start_profile(self, duration: float, name: str) -> None:
        """py-spy over the next ``duration`` seconds (the gateway only: raw is not the subject)."""
        if not self.cfg.profile or self.target != "gateway" or self.server is None:
            return
        self.cfg.results.mkdir(parents=True, exist_ok=True)
        out = self.cfg.results / f"{self.cfg.scenario}-{self.cfg.stamp}-{name}.pyspy.txt"
        self.profiler = Profiler(self.server.pid, out, duration, self.cfg.load_cpu)
        self.profiler.start()

    def finish_profile(self) -> dict[str, Any] | None:
        if self.profiler is None:
            return None
        summary = self.profiler.finish()
        self.profiler = None
        return summary

    async def final_state(self) -> dict[str, Any]:
        """Publish a marker as the very last update; time until every client holds it.

        Also checks sampler clients (which decode every frame) hold exactly
        the versions Redis confirmed for every SKU: merged, never lost.
        """
        fleet, pub = self.fleet, self.pub
        await pub.drain()
        clients = len(fleet.open_conns())
        sku, ver, _ = await pub.marker()
        missing = await fleet.wait_final(sku, ver, self.cfg.final_timeout)
        holders = [c for c in fleet.conns if c.final_ms is not None]
        marker_ts = 0
        if holders:
            import msgpack

            frame = msgpack.unpackb(holders[0].last, raw=False)
            marker_ts = next(int(i["ts"]) for i in frame["items"] if i["sku"] == sku)
        times = [c.final_ms - marker_ts for c in holders]  # type: ignore[operator]
        samplers = [c for c in fleet.samplers if c.open]
        exact = sum(1 for c in samplers if c.versions == pub.versions)
        return {
            "clients": clients,
            "reached": len(holders),
            "missing": len(missing),
            "all_reached": not missing and len(holders) >= clients,
            "ms": percentiles(times),
            "samplers_exact_state": exact,
            "samplers": len(samplers),
            "sampler_seq_gaps": sum(c.gaps for c in samplers),
        }


class Window:
    """Counters and CPU between two instants: a measurement window."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.start = self._snap()
        self.cpus = procs.cpu_times()
        self.epoch = time.time()

    def _snap(self) -> dict[str, float]:
        rig = self.rig
        assert rig.server is not None
        assert rig.redis is not None
        extra = 0.0
        if rig.profiler is not None and rig.profiler.pid_of_profiler is not None:
            with contextlib.suppress(OSError):
                extra = procs.cpu_seconds(rig.profiler.pid_of_profiler)
        return {
            "wall": time.monotonic(),
            "server": procs.cpu_seconds(rig.server.pid),
            "loadgen": procs.cpu_seconds(),
            "redis": procs.cpu_seconds(rig.redis.pid),
            "profiler": extra,
            "busy": procs.machine_busy()[0],
            "frames": rig.fleet.frames,
            "bytes": rig.fleet.bytes,
            "published": rig.pub.ok,
            "sample_frames": rig.fleet.sample_frames,
            "sample_items": rig.fleet.sample_items,
        }

    def close(self) -> dict[str, Any]:
        a, b = self.start, self._snap()
        d = {k: b[k] - a[k] for k in a}
        seconds = d["wall"] or 1e-9
        ours = d["server"] + d["loadgen"] + d["redis"] + d["profiler"]
        items_per_frame = d["sample_items"] / d["sample_frames"] if d["sample_frames"] else None
        out: dict[str, Any] = {
            "seconds": round(seconds, 3),
            "frames": int(d["frames"]),
            "frames_per_s": round(d["frames"] / seconds, 1),
            "mbytes_per_s": round(d["bytes"] / seconds / 1e6, 2),
            "published": int(d["published"]),
            "published_per_s": round(d["published"] / seconds, 1),
            # Cores used: 1.0 is one core busy for the whole window.
            "server_cpu": round(d["server"] / seconds, 3),
            "loadgen_cpu": round(d["loadgen"] / seconds, 3),
            "redis_cpu": round(d["redis"] / seconds, 3),
            "profiler_cpu": round(d["profiler"] / seconds, 3),
            "other_cpu": round(max(0.0, d["busy"] - ours) / seconds, 3),
        }
        if items_per_frame is not None:
            out["items_per_frame"] = round(items_per_frame, 2)
            out["sku_updates_per_s"] = round(d["frames"] / seconds * items_per_frame, 1)
        if d["server"] > 0:
            out["frames_per_server_cpu_s"] = round(d["frames"] / d["server"], 1)
        if self.rig.gc_path is not None:
            out["gc"] = gctrace.summarize(str(self.rig.gc_path), self.epoch, time.time())
        cores = out["cores"] = self._cores(seconds)
        if self.rig.cfg.pin and "cpu0" in cores and "cpu1" in cores:
            # Busy time on each pinned core that none of our processes (nor softirq) account for:
            # other people's work competing with the measurement.
            c0, c1 = cores["cpu0"], cores["cpu1"]
            ours1 = out["loadgen_cpu"] + out["redis_cpu"] + out["profiler_cpu"]
            out["foreign_on_server_core"] = round(max(0.0, c0["busy"] - c0["softirq"] - out["server_cpu"]), 3)
            out["foreign_on_load_core"] = round(max(0.0, c1["busy"] - c1["softirq"] - ours1), 3)
        return out

    def _cores(self, seconds: float) -> dict[str, dict[str, float]]:
        """Per CPU: busy share and its softirq part (loopback TCP), over the window."""
        now = procs.cpu_times()
        out = {}
        for cpu, before in self.cpus.items():
            after = now.get(cpu, before)
            d = {k: after[k] - before.get(k, 0.0) for k in after}
            total = sum(d.values()) or 1e-9
            out[cpu] = {
                "busy": round(1 - (d.get("idle", 0) + d.get("iowait", 0)) / total, 3),
                "user": round((d.get("user", 0) + d.get("nice", 0)) / total, 3),
                "system": round(d.get("system", 0) / total, 3),
                "softirq": round((d.get("softirq", 0) + d.get("irq", 0)) / total, 3),
            }
        return out


class Monitor:
    """Samples the run every ``period`` seconds: delivered rate, server RSS/CPU, staleness."""

    def __init__(self, rig: Rig, *, period: float = 0.1, scrape: bool = False) -> None:
        self.rig = rig
        self.period = period
        self.scrape = scrape
        self.t0 = time.monotonic()
        self.t0_ms = time.time() * 1000
        self.points: list[dict[str, float]] = []
        #: Staleness samples (ms), every client every tick, while ``staleness_on``.
        self.staleness = array("f")
        self.staleness_on = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        rig = self.rig
        assert rig.server is not None
        pid = rig.server.pid
        last_t, last_frames, last_ok = time.monotonic(), rig.fleet.frames, rig.pub.ok
        last_cpu, last_cpu_t = procs.cpu_seconds(pid), last_t
        last_recv, last_scrape, tick = 0.0, last_t, 0
        if self.scrape:
            last_recv = await rig.received()
        while True:
            # Jittered: a fixed 100 ms tick would lock onto the gateway's 100 ms flushes and
            # sample every sawtooth of staleness at the same phase.
            await asyncio.sleep(self.period * random.uniform(0.5, 1.5))
            now = time.monotonic()
            dt = now - last_t
            frames, ok = rig.fleet.frames, rig.pub.ok
            point: dict[str, float] = {
                "t": round(now - self.t0, 2),
                "frames_per_s": round((frames - last_frames) / dt, 1),
                "published_per_s": round((ok - last_ok) / dt, 1),
            }
            last_t, last_frames, last_ok = now, frames, ok
            tick += 1
            if tick % 5 == 0:
                with contextlib.suppress(OSError):
                    point["rss_mb"] = round(procs.status_kb(pid, "VmRSS") / 1024, 1)
                    cpu = procs.cpu_seconds(pid)
                    point["server_cpu"] = round((cpu - last_cpu) / (now - last_cpu_t), 3)
                    last_cpu, last_cpu_t = cpu, now
                if self.scrape:
                    received = await rig.received()
                    point["received_per_s"] = round((received - last_recv) / (now - last_scrape), 1)
                    last_recv, last_scrape = received, now
            if self.staleness_on:
                lags = rig.fleet.staleness(time.time() * 1000, rig.pub.first_sent_after)
                self.staleness.extend(lags)
                ordered = sorted(lags)
                if ordered:
                    point["stale_p50"] = round(ordered[len(ordered) // 2], 1)
                    point["stale_p99"] = round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1)
                    point["stale_max"] = round(ordered[-1], 1)
            self.points.append(point)

    def latency_series(self) -> list[dict[str, float]]:
        """Per-second p50/p99/max of the latency samples, against seconds into the run."""
        fleet = self.rig.fleet
        buckets: dict[int, list[float]] = {}
        for at, lat in zip(fleet.lat_at, fleet.lat_ms, strict=True):
            buckets.setdefault(int((at - self.t0_ms) / 1000), []).append(lat)
        out = []
        for second in sorted(buckets):
            values = sorted(buckets[second])
            out.append({"t": second + 0.5, "p50": round(values[len(values) // 2], 1),
                        "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))], 1),
                        "max": round(values[-1], 1), "n": len(values)})
        return out
