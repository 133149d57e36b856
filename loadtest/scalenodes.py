"""Pieces of the scaling simulation's topology: gateway node processes, slot owners, counters.

Used by :mod:`loadtest.scaling`, which wires them into one run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot

from gateway.protocol import channel
from loadtest.bench.procs import JWT_SECRET, cpu_seconds, free_port, http_get, metric_sum

#: Gateway counters read before and after the window (summed over label sets).
COUNTERS = (
    "stockwire_updates_received_total",
    "stockwire_updates_merged_total",
    "stockwire_updates_discarded_total",
    "stockwire_frames_sent_total",
    "stockwire_bytes_sent_total",
    "stockwire_frames_encoded_total",
    "stockwire_slow_client_skips_total",
    "stockwire_client_closes_total",
    "stockwire_messages_dropped_total",
)



@dataclass
class Node:
    """One ``stockwire serve`` subprocess."""

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def metrics(self) -> dict[str, float]:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics", 5.0)
        text = body.decode() if status == 200 else ""
        return {name: metric_sum(text, name) for name in COUNTERS}


def start_node(name: str, workdir: Path, redis_url: str, interval: float) -> Node:
    """``stockwire serve --workers 1`` against the cluster, abuse limits lifted.

    The per-address caps and handshake rate limits protect a node on the
    internet; thousands of clients from one loopback address would measure
    those instead of fan-out.
    """
    port = free_port()
    log = workdir / f"{name}.log"
    args = [
        str(Path(sys.executable).with_name("stockwire")), "serve", "--workers", "1",
        "--host", "127.0.0.1", "--port", str(port), "--redis-url", redis_url, "--redis-cluster",
        "--jwt-secret", JWT_SECRET, "--interval", str(interval), "--max-connections", "1000000",
        "--max-connections-per-address", "1000000", "--handshake-rate", "1000000",
        "--handshake-burst", "1000000", "--handshake-rate-per-address", "1000000",
        "--handshake-burst-per-address", "1000000", "--drain-window", "0", "--log-level", "warning",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKWIRE_")}
    popen = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    node = Node(name, port, popen, log)
    deadline = time.monotonic() + 30
    while http_get(f"http://127.0.0.1:{port}/readyz", 0.5)[0] != 200:
        if popen.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(f"{name} did not become ready:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return node


def slot_owners(client: redis.Redis) -> list[tuple[int, int, int]]:
    """(first slot, last slot, primary port) for every slot range of the cluster."""
    return [(int(r[0]), int(r[1]), int(r[2][1])) for r in client.execute_command("CLUSTER", "SLOTS")]


def shard_of(room: str, owners: list[tuple[int, int, int]]) -> int:
    slot = key_slot(channel(room).encode())
    for first, last, port in owners:
        if first <= slot <= last:
            return port
    raise LookupError(f"no primary owns slot {slot}")


def pick_rooms(count: int, ports: list[int], owners: list[tuple[int, int, int]]) -> dict[str, int]:
    """Room → shard port, the same number of rooms on every shard.

    Hash slots spread names unevenly over a handful of rooms; an equal split
    keeps "every shard carried traffic" true in the quick run and makes
    per-shard figures comparable.
    """
    quota = {port: count // len(ports) + (1 if i < count % len(ports) else 0) for i, port in enumerate(ports)}
    rooms: dict[str, int] = {}
    i = 0
    while len(rooms) < count:
        name = f"live-{i}"
        port = shard_of(name, owners)
        if quota[port] > 0:
            quota[port] -= 1
            rooms[name] = port
        i += 1
    return rooms


def shard_numsub(client: redis.Redis, room: str) -> int:
    """Subscribers of the room's channel on its shard: the gateway nodes holding its viewers."""
    reply = client.execute_command("PUBSUB", "SHARDNUMSUB", channel(room))
    return int(reply[1]) if len(reply) >= 2 else 0


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (a ``serve`` may fork workers)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
    return total


def shard_stats(client: redis.Redis) -> dict[str, float]:
    """What one primary says it did: script calls, publishes (from scripts too), bytes out, CPU."""
    stats = client.info("stats")
    commands = client.info("commandstats")
    cpu = client.info("cpu")
    return {
        "evalsha_calls": float(commands.get("cmdstat_evalsha", {}).get("calls", 0)),
        "spublish_calls": float(commands.get("cmdstat_spublish", {}).get("calls", 0)),
        "net_output_bytes": float(stats.get("total_net_output_bytes", 0)),
        "cpu_s": float(cpu.get("used_cpu_user", 0)) + float(cpu.get("used_cpu_sys", 0)),
    }
