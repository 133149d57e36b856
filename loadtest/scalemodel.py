"""The capacity model of docs/scaling.md as code: its prediction for a topology, and the comparison.

Kept apart from the simulation that runs the topology (:mod:`loadtest.scaling`),
so the model can be read, and frame sizes reproduced, without starting anything.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.protocol import encode_frame, ws_binary_frame
from loadtest.bench.publisher import START_QTY

#: Frames written per gateway CPU-second, one room, 5,000 clients, 1 item per frame:
#: docs/benchmarks.md, campaign results/bench/all-20261203-200752.json (median of 3,
#: ``make bench BENCH_ARGS="--runs 3 --quiet-below 0.3"``).  The model's CPU prediction
#: divides frames/s by this.
BENCH_FRAMES_PER_CPU_S = 151_312.0


def frame_bytes(room: str, items: int, sku_len: int = 5) -> int:
    """Bytes on the wire of one viewer ``update`` frame with ``items`` items (WebSocket header included).

    Built with the gateway's own encoder, so the size follows the protocol
    (viewer items carry exactly sku/qty/st/ver/ts) rather than a guess.
    Values are sized like a real run's: a 10-digit quantity, a 6-digit
    version, a millisecond timestamp, SKU names of ``sku_len`` characters.
    """
    now = int(time.time() * 1000)
    body = [{"sku": f"{i:0{sku_len}d}", "qty": START_QTY - 100_000, "st": "ok", "ver": 100_000, "ts": now}
            for i in range(items)]
    return len(ws_binary_frame(encode_frame("update", room, 123_456, now, body)))


def predict(*, rooms: dict[str, int], clients: dict[str, dict[str, int]], rate: float,
            interval: float, skus: int, duration: float) -> dict[str, Any]:
    """What the capacity model says for these inputs (totals over ``duration`` and per second).

    - publishes into Redis = offered rate, spread evenly over rooms;
    - Redis → gateways = each room's publishes * nodes holding viewers of it
      (every such node subscribes once on the room's shard);
    - flushes per room per node = min(room rate, 1/interval): the pacer sends
      at once if the last flush is older than the interval, else at the
      interval's end, so it never exceeds 1/interval and never merges when
      updates are sparser than that;
    - frames to clients = flushes * that node's viewers of the room;
    - items per frame = room rate / flushes, capped at the room's SKU count
      (more updates of one SKU within a flush are merged, not sent);
    - bytes = frames * the encoded frame size for that many items;
    - gateway CPU = frames / the benchmark's frames per CPU-second.
    """
    per_room = rate / len(rooms)
    flushes = min(per_room, 1 / interval) if interval > 0 else per_room
    items = min(per_room / flushes, skus) if flushes else 0.0
    merged_per_flush = max(0.0, per_room / flushes - skus) if flushes else 0.0
    shards: dict[str, dict[str, float]] = {}
    nodes: dict[str, dict[str, float]] = {}
    for room, port in rooms.items():
        holders = [n for n, c in clients[room].items() if c > 0]
        s = shards.setdefault(str(port), {"rooms": 0, "publishes_per_s": 0.0, "delivered_per_s": 0.0})
        s["rooms"] += 1
        s["publishes_per_s"] += per_room
        s["delivered_per_s"] += per_room * len(holders)
        whole = int(items)
        low = frame_bytes(room, whole)
        size = low + (items - whole) * (frame_bytes(room, whole + 1) - low)  # linear in items
        for n in holders:
            d = nodes.setdefault(n, {"updates_received_per_s": 0.0, "flushes_per_s": 0.0,
                                     "frames_per_s": 0.0, "bytes_per_s": 0.0, "merged_per_s": 0.0})
            d["updates_received_per_s"] += per_room
            d["flushes_per_s"] += flushes
            d["frames_per_s"] += flushes * clients[room][n]
            d["bytes_per_s"] += flushes * clients[room][n] * size
            d["merged_per_s"] += flushes * merged_per_flush
    for d in nodes.values():
        d["cpu_s"] = d["frames_per_s"] * duration / BENCH_FRAMES_PER_CPU_S
    return {
        "publishes_per_s": rate,  # the plan
        "redis_to_gateways_per_s": sum(s["delivered_per_s"] for s in shards.values()),
        "frames_to_clients_per_s": sum(d["frames_per_s"] for d in nodes.values()),
        "bytes_to_clients_per_s": sum(d["bytes_per_s"] for d in nodes.values()),
        "items_per_frame": items,
        "frame_bytes": {"1_item": frame_bytes(next(iter(rooms)), 1),
                        "10_items": frame_bytes(next(iter(rooms)), 10)},
        "per_shard": shards,
        "per_node": nodes,
    }


def compare(measured: dict[str, Any], model: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Measured vs predicted for each hop, with the ratio (1.0 = the model was exact)."""
    out: dict[str, dict[str, float]] = {}

    def add(name: str, m: float, p: float) -> None:
        out[name] = {"measured": round(m, 3), "model": round(p, 3), "ratio": round(m / p, 3) if p else 0.0}

    add("publishes_per_s", measured["publishes_per_s"], model["publishes_per_s"])
    add("spublish_per_s", measured["spublish_per_s"], model["publishes_per_s"])
    add("redis_to_gateways_per_s", measured["redis_to_gateways_per_s"], model["redis_to_gateways_per_s"])
    add("flushes_per_s", sum(d["flushes_per_s"] for d in measured["per_node"].values()),
        sum(d["flushes_per_s"] for d in model["per_node"].values()))
    add("frames_to_clients_per_s", measured["frames_to_clients_per_s"], model["frames_to_clients_per_s"])
    add("client_frames_per_s", measured["client_frames_per_s"], model["frames_to_clients_per_s"])
    add("bytes_to_clients_per_s", measured["bytes_to_clients_per_s"], model["bytes_to_clients_per_s"])
    add("items_per_frame", measured["items_per_frame"], model["items_per_frame"])
    add("merged_per_s", sum(d["merged_per_s"] for d in measured["per_node"].values()),
        sum(d["merged_per_s"] for d in model["per_node"].values()))
    add("gateway_cpu_s", measured["cpu_s"]["gateways"], sum(d["cpu_s"] for d in model["per_node"].values()))
    for port, s in measured["per_shard"].items():
        add(f"shard_{port}_spublish_per_s", s["spublish_per_s"], model["per_shard"][port]["publishes_per_s"])
    for name, d in measured["per_node"].items():
        add(f"{name}_received_per_s", d["updates_received_per_s"],
            model["per_node"][name]["updates_received_per_s"])
        add(f"{name}_frames_per_s", d["frames_per_s"], model["per_node"][name]["frames_per_s"])
    return out
