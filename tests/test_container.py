"""What the Docker image does, done the same way in a fresh virtual environment.

No Docker engine runs on our machines, so this test takes the image's own
instructions from the Dockerfile — the install command, the final stage's
environment, entrypoint, command and health check — and runs them against a
non-editable install in a new venv.  If the Dockerfile and the package drift
apart (a missing package-data file, a renamed command), this fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import JWT_SECRET, free_port
from tests.screens import Screen
from tests.test_cli import wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def final_stage() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages = re.split(r"(?m)^FROM ", text)
    return [line.strip() for line in stages[-1].splitlines() if line.strip() and not line.startswith("#")]


def instruction(lines: list[str], name: str) -> str:
    found = [line[len(name) + 1:].strip() for line in lines if line.startswith(name + " ")]
    assert found, f"Dockerfile final stage has no {name}"
    return found[-1]


def image_env(lines: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in lines:
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def install_command() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"/opt/stockwire/bin/pip install --no-cache-dir \.", text)
    assert match, "the build stage installs the package with pip"
    return ["pip", "install", "."]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the package installed as the image does."""
    assert (ROOT / "clients/web/dist").is_dir(), "run `make web` first (make test does)"
    path = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / install_command()[0]), *install_command()[1:]]
    done = subprocess.run([*pip, "-q", str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return path


@pytest.mark.slow
async def test_the_image_instructions_give_a_working_gateway(
    venv: Path, tmp_path: Path, redis_url: str
) -> None:
    lines = final_stage()
    env = image_env(lines)
    entrypoint = json.loads(instruction(lines, "ENTRYPOINT"))
    command = json.loads(instruction(lines, "CMD"))
    health = json.loads(instruction(lines, "HEALTHCHECK").split(" CMD ", 1)[1])
    assert instruction(lines, "USER") != "root"


    port = free_port()
    run_env = {**os.environ, **env, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
               "STOCKWIRE_PORT": str(port), "STOCKWIRE_REDIS_URL": redis_url,
               "STOCKWIRE_JWT_SECRET": JWT_SECRET, "STOCKWIRE_WORKERS": "2"}
    run_env.pop("VIRTUAL_ENV", None)
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / entrypoint[0]), *entrypoint[1:], *command, env=run_env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    try:
        try:
            await wait_for_port(port, timeout=30)
        except OSError:
            proc.terminate()
            _, err = await proc.communicate()
            raise AssertionError(err.decode()[-3000:]) from None
        check = await asyncio.to_thread(
            subprocess.run, [str(venv / "bin" / health[0]), *health[1:]], env=run_env, timeout=10
        )
        assert check.returncode == 0
        async with Screen(f"ws://127.0.0.1:{port}/ws/docker") as screen:
            await screen.until(lambda s: s.frames, timeout=10)
            assert screen.frames[0]["t"] == "snapshot"
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/overlay/docker", timeout=5).read()
        )
        assert b"<html" in page.lower()
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b'"level": "error"' not in err
