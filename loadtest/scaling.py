"""A bounded multi-node simulation on loopback, measured hop by hop and set against the model.

Why this exists: ``docs/scaling.md`` extrapolates from one-core benchmark
figures to a million viewers and a thousand rooms.  An extrapolation is only
as good as its model, so this runs the *topology* the model describes — a
3-primary Redis Cluster, two ``stockwire serve`` nodes, rooms spread over the
shards, viewers of every room on both nodes, a publisher running the real Lua
script — small enough for a 2-core machine, counts every hop, and prints the
model's prediction for the same inputs next to each measurement.  Where the
two agree the model's arithmetic is right; where they differ the JSON says by
how much.

Hops (per second, over the publishing window), each measured where it lands,
never computed with the model's own formula:

1. publisher → Redis: script calls confirmed ``ok`` by the publisher, against
   the *planned* rate; per shard, the ``SPUBLISH`` calls Redis counted
   (``cmdstat_spublish``);
2. Redis → gateway nodes: records the nodes received
   (``stockwire_updates_received_total``); confirmed publishes times ``PUBSUB
   SHARDNUMSUB`` is reported beside it as *derived*: the deliveries Redis owed;
3. gateway → clients: per node, ``stockwire_frames_sent_total`` /
   ``stockwire_bytes_sent_total``, flushes (``stockwire_frames_encoded_total``),
   ``stockwire_updates_merged_total``;
4. clients: frames and bytes received, counted by :mod:`loadtest.bench.wsclient`.

Plus CPU seconds of every process (gateways, each redis-server, the load
generator itself) from ``/proc``, and the peak pub/sub output buffer Redis held
for any subscriber (``CLIENT LIST TYPE pubsub``: ``omem``).

Run: ``.venv/bin/python -m loadtest.scaling [--quick]``; results go to
``results/scaling/scaling-<stamp>.json``.  It stops by itself and kills what it
started, including on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from loadtest.bench.procs import (
    CLK_TCK,
    cpu_seconds,
    machine,
    raise_nofile,
)
from loadtest.bench.publisher import Resp, StockPublisher, open_resp
from loadtest.bench.wsclient import Fleet
from loadtest.redisprocs import RedisClusterNodes
from loadtest.scalemodel import BENCH_FRAMES_PER_CPU_S, compare, frame_bytes, predict
from loadtest.scalenodes import (
    COUNTERS,
    Node,
    pick_rooms,
    process_cpu,
    shard_numsub,
    shard_stats,
    slot_owners,
    start_node,
)

__all__ = ["BENCH_FRAMES_PER_CPU_S", "Config", "compare", "frame_bytes", "main", "predict"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Config:
    """What to simulate.  The defaults are the full run; ``--quick`` shrinks every count."""

    rooms: int = 30
    clients_per_room: int = 100
    rate: float = 600.0
    duration: float = 20.0
    interval: float = 0.1
    skus: int = 10
    nodes: int = 2
    quick: bool = False
    results: str = "results/scaling"

    @classmethod
    def quick_config(cls, results: str = "results/scaling") -> Config:
        return cls(rooms=6, clients_per_room=10, rate=120.0, duration=3.0, quick=True, results=results)


# -- the run ----------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[scaling] {message}", flush=True)


class Simulation:
    """Owns every process and connection of one run; :meth:`close` releases them all."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dir = Path(tempfile.mkdtemp(prefix="stockwire-scaling-"))
        self.cluster: RedisClusterNodes | None = None
        self.nodes: list[Node] = []
        self.conns: list[Resp] = []
        self.pubs: dict[str, StockPublisher] = {}
        self.fleets: dict[tuple[str, str], Fleet] = {}

    async def close(self) -> None:
        for fleet in self.fleets.values():
            fleet.close()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0.1)
        for node in self.nodes:
            node.stop()
        if self.cluster is not None:
            self.cluster.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        raise_nofile()
        started = time.perf_counter()
        log("starting a 3-primary Redis Cluster")
        cluster_dir = self.dir / "cluster"
        cluster_dir.mkdir()
        self.cluster = RedisClusterNodes(cluster_dir)
        await asyncio.to_thread(self.cluster.start)
        clients = {n.port: n.client() for n in self.cluster.nodes}
        ports = list(clients)
        owners = slot_owners(clients[ports[0]])
        rooms = pick_rooms(cfg.rooms, ports, owners)
        buffer_limit = clients[ports[0]].config_get("client-output-buffer-limit")

        log(f"starting {cfg.nodes} gateway nodes")
        for i in range(cfg.nodes):
            self.nodes.append(await asyncio.to_thread(
                start_node, f"node{i}", self.dir, self.cluster.url, cfg.interval))

        log(f"seeding {len(rooms)} rooms × {cfg.skus} SKUs")
        skus = [f"sku-{i}" for i in range(cfg.skus)]
        for room, port in rooms.items():
            conn = await open_resp(f"redis://127.0.0.1:{port}/0")
            self.conns.append(conn)
            pub = self.pubs[room] = StockPublisher(conn, room, skus)
            await pub.prepare()

        log(f"joining {cfg.rooms * cfg.clients_per_room} viewers ({cfg.clients_per_room} per room, "
            f"split over {cfg.nodes} nodes)")
        split: dict[str, dict[str, int]] = {}
        joins: list[dict[str, Any]] = []
        for r, room in enumerate(rooms):
            split[room] = {}
            for i, node in enumerate(self.nodes):
                # Uneven splits alternate which node gets the spare viewer.
                spare = 1 if (i + r) % cfg.nodes < cfg.clients_per_room % cfg.nodes else 0
                n = cfg.clients_per_room // cfg.nodes + spare
                split[room][node.name] = n
                fleet = self.fleets[(room, node.name)] = Fleet(
                    "127.0.0.1", node.port, f"/ws/{room}", sample_every=max(1, n), per_address=1000)
                if n:
                    joins.append(await fleet.connect(n, concurrency=100, timeout=30))
        failed = sum(j["failed"] for j in joins)
        if failed:
            reasons = [j["failures"] for j in joins if j["failed"]]
            raise RuntimeError(f"{failed} viewers failed to join: {reasons}")
        await asyncio.sleep(max(0.5, 3 * cfg.interval))  # let join snapshots drain out of the counters

        numsub = {room: shard_numsub(clients[port], room) for room, port in rooms.items()}

        before = await self._snapshot(clients)
        log(f"publishing {cfg.rate:g} updates/s over {len(rooms)} rooms for {cfg.duration:g} s")
        omem = {str(p): 0 for p in ports}
        sampler = asyncio.create_task(self._sample_omem(clients, omem))
        window_start = time.perf_counter()
        skipped = await self._publish(list(self.pubs.values()), cfg.rate, cfg.duration)
        publish_seconds = time.perf_counter() - window_start
        for pub in self.pubs.values():
            await pub.drain(30)
        # Wait until every delivered record reached the nodes and the last flush went out.
        expected_received = before["received"] + sum(
            (self.pubs[room].ok - before["ok"][room]) * numsub[room] for room in rooms)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            received = 0.0
            for n in self.nodes:
                received += (await asyncio.to_thread(n.metrics))["stockwire_updates_received_total"]
            if received >= expected_received:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.3, 3 * cfg.interval))
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        after = await self._snapshot(clients)
        window = publish_seconds

        measured = self._measured(rooms, numsub, before, after, window, skipped, omem)
        # The plan, not what was achieved: a load generator that falls short shows as
        # a ratio below 1 on the first hop and every hop after it.
        model = predict(rooms=rooms, clients=split, rate=cfg.rate,
                        interval=cfg.interval, skus=cfg.skus, duration=window)
        report = {
            "scenario": "scaling",
            "timestamp": time.strftime("%Y%m%d-%H%M%S"),
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine(),
            "config": asdict(cfg),
            "command": "python -m loadtest.scaling" + (" --quick" if cfg.quick else ""),
            "topology": {
                "shards": {str(p): [r for r, q in rooms.items() if q == p] for p in ports},
                "nodes": {n.name: n.port for n in self.nodes},
                "viewers": split,
                "shardnumsub": numsub,
                "pubsub_output_buffer_limit": buffer_limit.get("client-output-buffer-limit", ""),
            },
            "join": {"joined": sum(j["joined"] for j in joins), "failed": failed},
            "window_s": round(window, 3),
            "measured": measured,
            "model": model,
            "comparison": compare(measured, model),
        }
        return report

    async def _publish(self, pubs: list[StockPublisher], rate: float, duration: float) -> int:
        """Open loop at ``rate`` over all rooms, a 10 ms tick's worth per write per room."""
        per_room = rate / len(pubs)
        start = time.perf_counter()
        sent = [0] * len(pubs)
        skipped = 0
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= duration:
                break
            due = int(per_room * elapsed)
            for i, pub in enumerate(pubs):
                n = due - sent[i]
                if n <= 0:
                    continue
                sent[i] = due
                if pub.inflight > 5000:  # Redis behind: drop, never catch up in a burst
                    skipped += n
                    continue
                pub.publish(n)
            await asyncio.sleep(0.01)
        return skipped

    async def _sample_omem(self, clients: dict[int, redis.Redis], peak: dict[str, int]) -> None:
        """Peak pub/sub output buffer per shard: the backlog Redis holds for a slow gateway."""
        while True:
            for port, client in clients.items():
                with contextlib.suppress(redis.RedisError):
                    listed = await asyncio.to_thread(client.client_list, "pubsub")
                    for c in listed:
                        peak[str(port)] = max(peak[str(port)], int(c.get("omem", 0)))
            await asyncio.sleep(0.25)

    async def _snapshot(self, clients: dict[int, redis.Redis]) -> dict[str, Any]:
        assert self.cluster is not None
        metrics = {n.name: await asyncio.to_thread(n.metrics) for n in self.nodes}
        return {
            "at": time.perf_counter(),
            "ok": {room: pub.ok for room, pub in self.pubs.items()},
            "metrics": metrics,
            "received": sum(m["stockwire_updates_received_total"] for m in metrics.values()),
            "shards": {str(p): await asyncio.to_thread(shard_stats, c) for p, c in clients.items()},
            "cpu": {
                **{n.name: process_cpu(n.popen.pid) for n in self.nodes},
                **{f"redis-{s.port}": process_cpu(s.proc.pid) for s in self.cluster.nodes if s.proc},
                "loadgen": cpu_seconds("self"),
            },
            "fleets": {key: {"frames": f.frames, "bytes": f.bytes,
                             "per_conn": [c.frames for c in f.conns]} for key, f in self.fleets.items()},
        }

    def _measured(self, rooms: dict[str, int], numsub: dict[str, int], before: dict[str, Any],
                  after: dict[str, Any], window: float, skipped: int, omem: dict[str, int]) -> dict[str, Any]:
        ok = {room: after["ok"][room] - before["ok"][room] for room in rooms}
        shards: dict[str, dict[str, float]] = {}
        for room, port in rooms.items():
            s = shards.setdefault(str(port), {"rooms": 0, "publishes": 0, "subscribers": 0})
            s["rooms"] += 1
            s["publishes"] += ok[room]
            s["subscribers"] += numsub[room]
        for port, s in shards.items():
            b, a = before["shards"][port], after["shards"][port]
            s["evalsha_calls"] = a["evalsha_calls"] - b["evalsha_calls"]
            s["spublish_calls"] = a["spublish_calls"] - b["spublish_calls"]
            # The rest are the gateways' own scripts: each node's viewer count per room every
            # stats interval (VIEWERS_SCRIPT) - Redis load that grows with rooms x nodes.
            s["gateway_scripts_per_s"] = round((s["evalsha_calls"] - s["publishes"]) / window, 1)
            s["net_output_bytes_per_s"] = round((a["net_output_bytes"] - b["net_output_bytes"]) / window, 1)
            s["publishes_per_s"] = round(s["publishes"] / window, 1)
            s["spublish_per_s"] = round(s["spublish_calls"] / window, 1)
            # Derived, not measured: what Redis owed the subscribers (Redis 7.0 counts
            # no per-client output); the nodes' received count is the measurement.
            s["owed_deliveries"] = sum(ok[r] * numsub[r] for r, q in rooms.items() if str(q) == port)
            s["cpu_s"] = round(after["cpu"][f"redis-{port}"] - before["cpu"][f"redis-{port}"], 3)
            s["peak_pubsub_omem_bytes"] = omem.get(port, 0)
        nodes: dict[str, dict[str, float]] = {}
        for n in self.nodes:
            b, a = before["metrics"][n.name], after["metrics"][n.name]
            d = {k.removeprefix("stockwire_").removesuffix("_total"): a[k] - b[k] for k in COUNTERS}
            d["updates_received_per_s"] = round(d["updates_received"] / window, 1)
            d["flushes_per_s"] = round(d["frames_encoded"] / window, 1)
            d["frames_per_s"] = round(d["frames_sent"] / window, 1)
            d["bytes_per_s"] = round(d["bytes_sent"] / window, 1)
            d["merged_per_s"] = round(d["updates_merged"] / window, 2)
            d["cpu_s"] = round(after["cpu"][n.name] - before["cpu"][n.name], 3)
            d["frames_per_cpu_s"] = round(d["frames_sent"] / d["cpu_s"], 1) if d["cpu_s"] > 0 else 0.0
            nodes[n.name] = d
        per_room: dict[str, dict[str, Any]] = {}
        client_frames = client_bytes = 0
        for (room, node), _fleet in self.fleets.items():
            fb, fa = before["fleets"][(room, node)], after["fleets"][(room, node)]
            client_frames += fa["frames"] - fb["frames"]
            client_bytes += fa["bytes"] - fb["bytes"]
            deltas = [x - y for x, y in zip(fa["per_conn"], fb["per_conn"], strict=True)]
            r = per_room.setdefault(room, {"shard": str(rooms[room]), "publishes": ok[room], "clients": 0,
                                           "clients_with_updates": 0, "frames": 0, "min_frames": None,
                                           "nodes": {}})
            r["clients"] += len(deltas)
            r["clients_with_updates"] += sum(1 for x in deltas if x > 0)
            r["frames"] += sum(deltas)
            if deltas:
                low = min(deltas)
                r["min_frames"] = low if r["min_frames"] is None else min(r["min_frames"], low)
            r["nodes"][node] = len(deltas)
        lg = after["cpu"]["loadgen"] - before["cpu"]["loadgen"]
        publishes = sum(ok.values())
        return {
            "publishes": publishes,
            "publishes_per_s": round(publishes / window, 1),
            "skipped": skipped,
            # Measured where the hop lands: records the gateway nodes received.
            "redis_to_gateways_per_s": round(sum(d["updates_received"] for d in nodes.values()) / window, 1),
            "owed_deliveries_per_s": round(sum(s["owed_deliveries"] for s in shards.values()) / window, 1),
            "spublish_per_s": round(sum(s["spublish_calls"] for s in shards.values()) / window, 1),
            "frames_to_clients_per_s": round(sum(d["frames_sent"] for d in nodes.values()) / window, 1),
            "bytes_to_clients_per_s": round(sum(d["bytes_sent"] for d in nodes.values()) / window, 1),
            "client_frames_received": client_frames,
            "client_frames_per_s": round(client_frames / window, 1),
            "client_bytes_per_s": round(client_bytes / window, 1),
            "avg_frame_bytes": round(client_bytes / client_frames, 1) if client_frames else 0.0,
            "items_per_frame": round(sum(d["updates_received"] - d["updates_merged"] for d in nodes.values())
                                     / max(1.0, sum(d["frames_encoded"] for d in nodes.values())), 2),
            "per_shard": shards,
            "per_node": nodes,
            "per_room": per_room,
            "cpu_s": {"gateways": round(sum(d["cpu_s"] for d in nodes.values()), 3),
                      "redis": round(sum(s["cpu_s"] for s in shards.values()), 3),
                      "loadgen": round(lg, 3)},
            "clk_tck": CLK_TCK,
        }


def print_report(report: dict[str, Any]) -> None:
    log(f"window {report['window_s']} s, {report['join']['joined']} viewers")
    print(f"{'hop':<36} {'measured':>12} {'model':>12} {'ratio':>7}")
    for name, row in report["comparison"].items():
        print(f"{name:<36} {row['measured']:>12,.1f} {row['model']:>12,.1f} {row['ratio']:>7.3f}")
    m = report["measured"]
    print(f"cpu seconds: {m['cpu_s']}  peak pubsub omem: "
          f"{ {p: s['peak_pubsub_omem_bytes'] for p, s in m['per_shard'].items()} }")


async def amain(cfg: Config) -> Path:
    sim = Simulation(cfg)
    try:
        report = await sim.run()
    finally:
        await sim.close()
    folder = Path(cfg.results)
    if not folder.is_absolute():
        folder = ROOT / folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scaling{'-quick' if cfg.quick else ''}-{report['timestamp']}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print_report(report)
    log(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    parser.add_argument("--rooms", type=int)
    parser.add_argument("--clients-per-room", type=int)
    parser.add_argument("--rate", type=float, help="updates/s over all rooms")
    parser.add_argument("--duration", type=float, help="seconds of publishing")
    parser.add_argument("--interval", type=float, help="the gateways' merge interval (s)")
    parser.add_argument("--results", default="results/scaling")
    args = parser.parse_args(argv)
    cfg = Config.quick_config(args.results) if args.quick else Config(results=args.results)
    for name in ("rooms", "clients_per_room", "rate", "duration", "interval"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    asyncio.run(amain(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
