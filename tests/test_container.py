"""The Docker image, built and run the way the Dockerfile says, without Docker.

No Docker engine runs on our machines, so :mod:`tests.dockerimage` replays the
Dockerfile: a build context staged from the repository minus ``.dockerignore``,
the Node stage's ``npm ci`` and build, the Python stage's venv and ``pip
install``, the final stage's ``COPY --from``, then nothing but that stage's
filesystem.  The gateway is started with the final stage's ENV, ENTRYPOINT and
CMD (only the port, Redis URL and secret are set from outside, as ``docker run
-e`` would), its HEALTHCHECK command is run, and a screen page and the bundle it
loads are fetched.  If the Dockerfile, ``.dockerignore`` and the package drift
apart (a file not copied, a bundle not built, package data missing, a renamed
command), this fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import JWT_SECRET, free_port
from tests.dockerimage import Built, Replay, exec_form, stage_context
from tests.screens import Screen
from tests.test_cli import wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("image")
    context = stage_context(ROOT, work / "context")
    # .dockerignore applied: no tests, and no bundle but the one the web stage builds.
    assert not (context / "tests").exists()
    assert not (context / "clients/web/dist").exists()
    built = Replay(ROOT / "Dockerfile", context, work / "rootfs").build()
    python = built.root / "opt/stockwire/bin/python"
    # uvloop is there, and the scaling simulation imports nothing from tests/ (not shipped).
    subprocess.run([str(python), "-c", "import uvloop, loadtest.scaling"], check=True, timeout=30)
    return built


def worker_pids(supervisor: int) -> list[int]:
    """Children of the supervisor that are gateway workers (not multiprocessing's tracker)."""
    pids = []
    for task in os.listdir(f"/proc/{supervisor}/task"):
        with open(f"/proc/{supervisor}/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    workers = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    workers.append(pid)
        except OSError:
            continue
    return workers


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, reply.read()


async def wait_for_workers(pid: int, expected: int, timeout: float = 30) -> list[int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(workers := worker_pids(pid)) != expected:
        assert loop.time() < deadline, f"{len(workers)} workers, expected {expected}"
        await asyncio.sleep(0.1)
    return workers


@pytest.mark.slow
async def test_the_image_built_and_started_as_the_dockerfile_says_is_a_working_gateway(
    image: Built, tmp_path: Path, redis_url: str
) -> None:
    final = image.stage
    user = final.last("USER")
    assert user not in ("root", "0")
    # Creating that user is the one system command; everything else was really run.
    assert [cmd.split()[0] for cmd in image.skipped] == ["useradd"]
    assert image.skipped[0].split()[-1] == user
    assert set(image.stages) == {"web", "build"}
    assert not any(p.exists() for p in image.stages.values())  # only the last stage is left

    port = free_port()
    env = {**os.environ, **image.env, "STOCKWIRE_PORT": str(port), "STOCKWIRE_REDIS_URL": redis_url,
           "STOCKWIRE_JWT_SECRET": JWT_SECRET}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    assert env["STOCKWIRE_WORKERS"] == "0"  # one worker per CPU
    command = [*exec_form(final.last("ENTRYPOINT")), *exec_form(final.last("CMD"))]
    health = exec_form(final.last("HEALTHCHECK").split(" CMD ", 1)[1])
    proc = await asyncio.create_subprocess_exec(
        command[0], *command[1:], env=env, cwd=image.root,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        try:
            await wait_for_port(port, timeout=30)
            # A cpuset counts, as in `docker run --cpuset-cpus`; with none, this is os.cpu_count().
            await wait_for_workers(proc.pid, len(os.sched_getaffinity(0)))
        except (OSError, AssertionError):
            proc.terminate()
            _, err = await proc.communicate()
            raise AssertionError(err.decode()[-3000:]) from None
        check = await asyncio.to_thread(subprocess.run, health, env=env, timeout=10)
        assert check.returncode == 0
        async with Screen(f"ws://127.0.0.1:{port}/ws/docker") as screen:
            await screen.until(lambda s: s.frames, timeout=10)
            assert screen.frames[0]["t"] == "snapshot"
        status, page = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/overlay/docker")
        assert status == 200
        scripts = re.findall(rb'<script[^>]+src="(?:\.\./)?static/([\w.-]+\.js)"', page)
        assert scripts, page[:500]
        for name in scripts:
            status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/static/{name.decode()}")
            assert status == 200
            # The bundle the web stage built, shipped through COPY --from=web and package data.
            built = image.root / "opt/stockwire/lib"
            (shipped,) = built.glob(f"python3*/site-packages/clients/web/dist/{name.decode()}")
            assert body == shipped.read_bytes()
            assert len(body) > 1000
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b'"level": "error"' not in err
