"""The six scenarios.  Each is one bounded run against one target (``gateway`` or ``raw``).

Every function returns a JSON-ready dict of figures; :mod:`loadtest.bench.cli`
repeats runs, alternates targets back to back, takes medians and checks the
targets.  Every wait is bounded: a scenario ends by itself even when the
server under test hangs or dies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loadtest.bench import procs
from loadtest.bench.publisher import StockPublisher, open_resp
from loadtest.bench.rig import Config, Monitor, Rig, Window
from loadtest.bench.wsclient import percentiles

Scenario = Callable[[Config, str], Awaitable[dict[str, Any]]]


def _latency(rig: Rig, start: int = 0, end: int | None = None) -> dict[str, float]:
    values = rig.fleet.lat_ms[start:end]
    return percentiles(values)


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _completeness(rig: Rig, expected: int) -> dict[str, Any]:
    """Frames each client got vs one per published update (plus its snapshot)."""
    counts = [c.frames for c in rig.fleet.conns if c.open]
    return {
        "expected_per_client": expected,
        "complete_clients": sum(1 for n in counts if n >= expected),
        "min_frames": min(counts, default=0),
        "max_frames": max(counts, default=0),
    }


async def fanout(cfg: Config, target: str) -> dict[str, Any]:
    """N clients, one room, one frame per update, as many updates as the server can carry.

    The gateway runs with ``--interval 0`` so that every update is flushed
    at once (one frame per update, like the raw server) and the closed-loop
    publisher keeps exactly ``window`` updates undelivered: frames/s is then
    the maximum sustainable flush rate times clients.
    """
    async with Rig(cfg, target, interval=0.0) as rig:
        fleet, pub = rig.fleet, rig.pub
        join = await fleet.connect(cfg.clients, concurrency=cfg.join_concurrency)
        clients = len(fleet.open_conns())
        sent_at_join, frames_at_join = pub.sent, fleet.frames
        monitor = Monitor(rig)
        monitor.start()
        await pub.closed_loop(fleet, clients, cfg.warmup, window=cfg.window)
        lat_start = len(fleet.lat_ms)
        fleet.recording = True
        rig.start_profile(cfg.duration, target)
        window = Window(rig)
        loop = await pub.closed_loop(fleet, clients, cfg.duration, window=cfg.window)
        measured = window.close()
        fleet.recording = False
        profile = rig.finish_profile()
        # Let the closed loop's last few updates land, so the marker times one flush, not a queue.
        expected = frames_at_join + (pub.sent - sent_at_join) * clients
        await _until(lambda: fleet.frames >= expected, 10.0)
        final = await rig.final_state()
        await monitor.stop()
        rig.check_alive()
        return {
            "target": target,
            "clients": clients,
            "join": join,
            "window": measured,
            "publisher": loop,
            "latency_ms": _latency(rig, lat_start),
            "final": final,
            "delivery": _completeness(rig, 1 + pub.sent - sent_at_join),
            "server": rig.server_memory(),
            "gateway_metrics": await rig.metrics(),
            "profile": profile,
            "series": monitor.points,
            "latency_series": monitor.latency_series(),
        }


async def latency(cfg: Config, target: str) -> dict[str, Any]:
    """N clients in one room; each rate in turn for ``duration`` s at the configured interval."""
    async with Rig(cfg, target) as rig:
        fleet, pub = rig.fleet, rig.pub
        join = await fleet.connect(cfg.clients, concurrency=cfg.join_concurrency)
        clients = len(fleet.open_conns())
        monitor = Monitor(rig)
        monitor.start()
        fleet.recording = True
        phases = []
        for rate in cfg.rates:
            await pub.drain()
            await asyncio.sleep(0.5)  # the previous phase's last frame is out
            start = len(fleet.lat_ms)
            window = Window(rig)
            rig.start_profile(cfg.duration, f"{target}-{rate:g}")
            driven = await pub.at_rate(rate, cfg.duration)
            await pub.drain()
            await asyncio.sleep(max(0.5, 3 * cfg.interval))  # its frames land inside the phase
            measured = window.close()
            phase = {"rate": rate, "latency_ms": _latency(rig, start), "window": measured,
                     "publisher": driven}
            profile = rig.finish_profile()
            if profile is not None:
                phase["profile"] = profile
            phases.append(phase)
        fleet.recording = False
        final = await rig.final_state()
        await monitor.stop()
        rig.check_alive()
        return {
            "target": target,
            "clients": clients,
            "interval": rig.interval if target == "gateway" else None,
            "join": join,
            "phases": phases,
            "final": final,
            "server": rig.server_memory(),
            "gateway_metrics": await rig.metrics(),
            "series": monitor.points,
            "latency_series": monitor.latency_series(),
        }


async def surge(cfg: Config, target: str) -> dict[str, Any]:
    """A flash-sale surge: ``rate`` updates/s over K SKUs for ``duration`` s, N clients watching.

    Staleness is sampled for every client every 100 ms: the newest published
    state's time minus the newest ``ts`` in the last frame the client got.
    """
    rate = cfg.rates[0]
    async with Rig(cfg, target) as rig:
        fleet, pub = rig.fleet, rig.pub
        join = await fleet.connect(cfg.clients, concurrency=cfg.join_concurrency)
        clients = len(fleet.open_conns())
        monitor = Monitor(rig)
        monitor.start()
        await asyncio.sleep(1.0)
        rss_before = rig.server_memory()
        fleet.recording = True
        monitor.staleness_on = True
        rig.start_profile(cfg.duration, target)
        window = Window(rig)
        started = time.monotonic() - monitor.t0
        driven = await pub.at_rate(rate, cfg.duration)
        measured = window.close()
        monitor.staleness_on = False
        fleet.recording = False
        profile = rig.finish_profile()
        final = await rig.final_state()
        await asyncio.sleep(0.5)
        await monitor.stop()
        rig.check_alive()
        rss = [p for p in monitor.points if "rss_mb" in p and started <= p["t"] <= started + cfg.duration]
        return {
            "target": target,
            "clients": clients,
            "rate": rate,
            "skus": cfg.skus,
            "interval": rig.interval,
            "join": join,
            "window": measured,
            "publisher": driven,
            "staleness_ms": percentiles(monitor.staleness),
            "latency_ms": _latency(rig),
            "final": final,
            "rss": _flatness(rss, rss_before),
            "server": rig.server_memory(),
            "gateway_metrics": await rig.metrics(),
            "profile": profile,
            "series": monitor.points,
            "latency_series": monitor.latency_series(),
        }


def _flatness(points: list[dict[str, float]], before: dict[str, int]) -> dict[str, Any]:
    """RSS over the surge: flat when the last quarter is within 5% (and 16 MB) of the first."""
    if len(points) < 4:
        return {"before_mb": round(before["rss_kb"] / 1024, 1), "samples": len(points)}
    quarter = max(1, len(points) // 4)
    first = sorted(p["rss_mb"] for p in points[:quarter])[quarter // 2]
    last = sorted(p["rss_mb"] for p in points[-quarter:])[quarter // 2]
    growth = last - first
    return {
        "before_mb": round(before["rss_kb"] / 1024, 1),
        "first_quarter_mb": first,
        "last_quarter_mb": last,
        "max_mb": max(p["rss_mb"] for p in points),
        "growth_mb": round(growth, 1),
        "growth_pct": round(100 * growth / first, 1) if first else None,
        "flat": growth <= max(0.05 * first, 0.0) or growth <= 1.0,
        "samples": len(points),
    }


async def idle(cfg: Config, target: str) -> dict[str, Any]:
    """N idle connections: the server's RSS growth per connection (kernel buffers not included)."""
    async with Rig(cfg, target) as rig:
        fleet = rig.fleet
        pause = 0.2 if cfg.quick else 1.0
        await fleet.connect(1)
        await asyncio.sleep(pause)  # the room is loaded, the first connection's one-off costs are paid
        before = rig.server_memory()
        loadgen_before = procs.status_kb("self", "VmRSS")
        steps = []
        remaining = cfg.clients - 1
        step = max(1, remaining // 4)
        join: dict[str, Any] = {}
        while remaining > 0:
            n = min(step, remaining)
            join = await fleet.connect(n, concurrency=cfg.join_concurrency)
            remaining -= n
            await asyncio.sleep(pause / 2)
            steps.append({"connections": len(fleet.open_conns()), "rss_kb": rig.server_memory()["rss_kb"]})
        await asyncio.sleep(cfg.duration)  # settle: handshake garbage collected, pings unchanged
        after = rig.server_memory()
        connections = len(fleet.open_conns())
        added = max(1, connections - 1)
        rig.check_alive()
        return {
            "target": target,
            "connections": connections,
            "rss_before_kb": before["rss_kb"],
            "rss_after_kb": after["rss_kb"],
            "hwm_kb": after["hwm_kb"],
            "kb_per_connection": round((after["rss_kb"] - before["rss_kb"]) / added, 2),
            "loadgen_kb_per_connection": round(
                (procs.status_kb("self", "VmRSS") - loadgen_before) / added, 2),
            "steps": steps,
            "last_join": join,
            "errors": dict(fleet.errors),
        }


async def join(cfg: Config, target: str) -> dict[str, Any]:
    """N clients join a room of K SKUs as fast as the server admits them, snapshot included."""
    async with Rig(cfg, target) as rig:
        fleet = rig.fleet
        await fleet.connect(1)  # the room is subscribed and loaded: joins measure joins
        rig.start_profile(600, target)  # stopped below, when the last client has joined
        window = Window(rig)
        result = await fleet.connect(cfg.clients, concurrency=cfg.join_concurrency)
        measured = window.close()
        profile = rig.finish_profile()
        sizes = [len(c.last) for c in fleet.conns[1:2] if c.last is not None]
        rig.check_alive()
        return {
            "target": target,
            "skus": cfg.skus,
            "snapshot_bytes": sizes[0] if sizes else None,
            "join": result,
            "server_cpu": measured["server_cpu"],
            # Joins per second of server CPU: what one whole core would admit, robust to contention.
            "per_server_cpu_s": round(result["joined"] / (measured["server_cpu"] * measured["seconds"]), 1)
            if measured["server_cpu"] else None,
            "cores": measured["cores"],
            "loadgen_cpu": measured["loadgen_cpu"],
            "other_cpu": measured["other_cpu"],
            "server": rig.server_memory(),
            "errors": dict(fleet.errors),
            "profile": profile,
        }


async def ingest(cfg: Config, target: str) -> dict[str, Any]:
    """Redis updates/s one worker ingests: publish flat out with one client connected.

    ``script`` publishes through the Lua script (what production does; Redis
    may be the limit); ``spublish`` publishes valid records straight to the
    channel so the gateway, not Redis, is the limit.  Received/s is the
    gateway's ``stockwire_updates_received_total`` over the publishing
    window; a backlog left at the end shows as drain time.
    """
    if target != "gateway":
        raise ValueError("ingest measures the gateway's own counter: target gateway only")
    async with Rig(cfg, target) as rig:
        await rig.fleet.connect(max(1, cfg.clients))
        script_pub = rig.pub
        modes = []
        # script first: records published straight to the channel move versions past the hash's.
        for mode in sorted(cfg.via, key=lambda m: m != "script"):
            await script_pub.drain()
            pub = script_pub
            if mode != "script":
                pub = StockPublisher(await open_resp(rig.redis_url), script_pub.room, script_pub.skus,
                                     mode=mode)
                pub.versions = dict(script_pub.versions)
                pub.sha = script_pub.sha
            rig.pub = pub
            modes.append(await _ingest_mode(rig, pub, mode))
            rig.pub = script_pub
            if pub is not script_pub:
                pub.conn.transport.close()  # type: ignore[union-attr]
        rig.check_alive()
        return {
            "target": target,
            "modes": modes,
            "gateway_metrics": await rig.metrics(),
            "server": rig.server_memory(),
        }


async def _ingest_mode(rig: Rig, pub: StockPublisher, mode: str) -> dict[str, Any]:
    cfg = rig.cfg
    assert rig.server is not None
    received0 = await rig.received()
    sent0 = pub.sent
    monitor = Monitor(rig, scrape=True, period=0.2)
    monitor.start()
    rig.start_profile(cfg.duration, f"ingest-{mode}")
    start = time.monotonic()
    window = Window(rig)
    # The one client decodes every frame: the versions it holds say how far the gateway got.
    watcher = rig.fleet.conns[0]
    base = sum(watcher.versions.values())

    def ahead() -> int:
        return pub.sent - sent0 - (sum(watcher.versions.values()) - base)

    driven = await pub.flat_out(cfg.duration, ahead=ahead, max_ahead=cfg.max_ahead)
    received1 = await rig.received()
    seconds = time.monotonic() - start
    measured = window.close()
    profile = rig.finish_profile()
    await pub.drain()
    published = pub.sent - sent0
    drain_start = time.monotonic()
    received = received1
    while received - received0 < published and time.monotonic() - drain_start < cfg.final_timeout:
        await asyncio.sleep(0.1)
        received = await rig.received()
    drained = time.monotonic() - drain_start
    await monitor.stop()
    final = await rig.final_state()
    return {
        "via": mode,
        "published": published,
        "published_per_s": round(published / seconds, 1),
        "received_per_s": round((received1 - received0) / seconds, 1),
        "received_total": int(received - received0),
        "drain_s": round(drained, 2),
        "server_cpu": measured["server_cpu"],
        # Updates per second of gateway CPU: what a whole core would ingest, robust to contention.
        "per_server_cpu_s": round((received1 - received0) / (measured["server_cpu"] * seconds), 1)
        if measured["server_cpu"] else None,
        "window": measured,
        "publisher": driven,
        "final": final,
        "profile": profile,
        "series": monitor.points,
    }


SCENARIOS: dict[str, Scenario] = {
    "fanout": fanout,
    "latency": latency,
    "surge": surge,
    "idle": idle,
    "join": join,
    "ingest": ingest,
}
