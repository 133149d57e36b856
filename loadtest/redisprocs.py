"""redis-server processes of our own: one Redis, or a real Redis Cluster on loopback.

Both the test suite and the scaling simulation (``python -m loadtest.scaling``)
start these, so they live in the installed package rather than in ``tests/``:
the simulation must run from the Docker image, where ``tests/`` is not shipped.
Each server binds 127.0.0.1 on a free port, keeps no data on disk and can be
stopped and started again on the same port (a cluster node then rejoins from
its ``nodes.conf``, owning its slots, with no keys).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.crc import key_slot

from loadtest.bench.procs import free_port

__all__ = ["RedisClusterNodes", "RedisNotInstalled", "RedisServer", "cluster_port", "free_port"]

#: Short enough that a failover fits in a test, long enough that a busy 2-core
#: machine does not mark healthy nodes as failed.
NODE_TIMEOUT_MS = 2000


class RedisNotInstalled(RuntimeError):
    """redis-server or redis-cli is missing: a setup error, never a reason to skip."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RedisNotInstalled(f"{name} is not installed: run scripts/ensure-redis.sh")
    return found


class RedisServer:
    """A redis-server of our own that a caller may stop and start again."""

    def __init__(self, workdir: Path, port: int | None = None, extra: tuple[str, ...] = (),
                 password: str | None = None) -> None:
        self.binary = _binary("redis-server")
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.extra = (*extra, "--requirepass", password) if password else extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def name(self) -> str:
        """``host:port``, as redis-py names cluster nodes."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def client(self) -> redis.Redis:
        """A blocking client that gives up after 5 s: a hung node fails the caller, not the run."""
        return redis.Redis(port=self.port, password=self.password, socket_timeout=5, socket_connect_timeout=2)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port < 55000:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


def _cluster_node(workdir: Path) -> RedisServer:
    workdir.mkdir()
    return RedisServer(workdir, cluster_port(), (
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
    ))


class RedisClusterNodes:
    """Three primaries, no replicas: a real Redis Cluster on loopback.

    :meth:`add_replica` attaches a replica to one primary, for failover.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cli = _binary("redis-cli")
        self.nodes = [_cluster_node(workdir / f"node{i}") for i in range(3)]
        self.replicas: list[RedisServer] = []

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, "--cluster", "create", *(n.name for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        self.wait_ok()

    def add_replica(self, primary: RedisServer, timeout: float = 20) -> RedisServer:
        """A new node replicating ``primary``, returned once its link is up."""
        replica = _cluster_node(self.workdir / f"replica{len(self.replicas)}")
        replica.start()
        self.replicas.append(replica)
        primary_id = primary.client().execute_command("CLUSTER", "MYID")
        subprocess.run(
            [self.cli, "--cluster", "add-node", replica.name, primary.name,
             "--cluster-slave", "--cluster-master-id", _text(primary_id)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        deadline = time.monotonic() + timeout
        while replica.client().info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("replica did not sync with its primary")
            time.sleep(0.05)
        return replica

    def wait_ok(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.running():
                try:
                    info = node.client().execute_command("CLUSTER", "INFO")
                    states.append("cluster_state:ok" in _text(info))
                except redis.ConnectionError:
                    states.append(False)
            if states and all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not become ok")

    def running(self) -> list[RedisServer]:
        return [n for n in (*self.nodes, *self.replicas) if n.proc is not None]

    def owner(self, key: str) -> RedisServer:
        """The running primary that serves ``key``'s slot, as the cluster reports it now."""
        return self.slot_owner(key_slot(key.encode()))

    def slot_owner(self, slot: int) -> RedisServer:
        by_port = {n.port: n for n in self.running()}
        for node in self.running():
            try:
                ranges = node.client().execute_command("CLUSTER", "SLOTS")
            except redis.ConnectionError:
                continue
            for first, last, primary, *_ in ranges:
                if int(first) <= slot <= int(last) and int(primary[1]) in by_port:
                    return by_port[int(primary[1])]
        raise LookupError(f"no running primary serves slot {slot}")

    def move_slot(self, slot: int, target: RedisServer) -> None:
        """Reshard one slot to ``target`` with its keys, the way ``redis-cli --cluster reshard`` does:
        IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE on the target, the source
        and every other node."""
        source = self.slot_owner(slot)
        if source is target:
            return
        src, dst = source.client(), target.client()
        source_id = _text(src.execute_command("CLUSTER", "MYID"))
        target_id = _text(dst.execute_command("CLUSTER", "MYID"))
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        others = [n for n in self.running() if n is not source and n is not target
                  and n.client().info("replication").get("role") == "master"]
        for node in (target, source, *others):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def flush(self) -> None:
        for node in self.running():
            if node.client().info("replication").get("role") == "master":
                node.client().flushall()

    def stop(self) -> None:
        for node in (*self.nodes, *self.replicas):
            node.stop()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
