"""``stockwire serve --workers N``: N processes, one port, one set of metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.request

from clients.publisher import Publisher
from tests.conftest import JWT_SECRET, free_port
from tests.screens import Screen
from tests.test_cli import start, wait_for_port


def children(pid: int) -> list[int]:
    """Worker processes (not multiprocessing's resource tracker)."""
    cmd = ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    return [int(line.split()[0]) for line in out.stdout.splitlines() if "spawn_main" in line]


def listeners(port: int) -> int:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


async def test_workers_share_the_port_and_report_metrics_together(redis_url: str) -> None:
    port = free_port()
    proc = await start("serve", "--workers", "2", "--port", str(port), "--drain-window", "0.5",
                       env={"STOCKWIRE_REDIS_URL": redis_url, "STOCKWIRE_JWT_SECRET": JWT_SECRET})
    screens = [Screen(f"ws://127.0.0.1:{port}/ws/wk") for _ in range(24)]
    try:
        await wait_for_port(port)
        for _ in range(100):  # both workers listening on the one port
            if listeners(port) == 2:
                break
            await asyncio.sleep(0.1)
        assert listeners(port) == 2
        workers = children(proc.pid)
        assert len(workers) == 2
        for s in screens:
            await s.__aenter__()
            await s.until(lambda s: s.frames)
        async with Publisher(redis_url) as pub:
            await pub.set("wk", "a", 5)
            # Each worker holds its own subscription to the room.
            numsub = await pub._client.execute_command("PUBSUB", "SHARDNUMSUB", "stockwire:{wk}:updates")
        assert int(numsub[1]) == 2
        for s in screens:
            await s.until(lambda s: s.qty() == {"a": 5})
        # Whichever worker answers, /metrics counts every worker's connections.
        for _ in range(4):
            connections = await asyncio.to_thread(metric, port, "stockwire_connections")
            assert connections == 24

        os.kill(workers[0], signal.SIGKILL)  # a crashed worker is replaced
        for _ in range(100):
            replaced = children(proc.pid)
            if len(replaced) == 2 and workers[0] not in replaced:
                break
            await asyncio.sleep(0.1)
        assert len(replaced) == 2
        assert workers[0] not in replaced

        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        assert proc.returncode == 0
        survivors = [s for s in screens if s.close_code != 1006]
        assert survivors
        assert all(s.close_code == 1012 for s in survivors)
    finally:
        for s in screens:
            await s.__aexit__()
        if proc.returncode is None:
            proc.kill()
