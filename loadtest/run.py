"""Run one rehearsal headless and keep its reports (``make loadtest`` calls this).

    python -m loadtest.run --scenario kol-surge [--host ws://GATEWAY] [--redis-url URL] \\
        [-- any further locust options, e.g. --speed 5 --peak-viewers 800 --processes 2]

Against a running gateway, give ``--host`` and ``--redis-url`` (the Redis its
stock services write to).  Without ``--host`` it starts what it needs on this
machine — a redis-server on a free port (unless ``--redis-url`` is given) and
a gateway (``stockwire serve``) with a fresh host-token secret — and stops them
afterwards.  Locust's CSV files, HTML report and log land in
``results/<scenario>-<timestamp>/``; the exit code is Locust's (see
docs/loadtest.md: failures and thresholds).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from loadtest.scenarios import SCENARIOS
from loadtest.summary import summarize

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
#: One load generator shows up as one client address; the gateway's
#: per-address cap (200 by default) is meant for the internet, not for this.
#: One load generator is one client address: lift the per-address limits, keep the node's own.
LOCAL_GATEWAY_OPTIONS = ("--max-connections-per-address", "1000000",
                         "--handshake-rate-per-address", "1000000",
                         "--handshake-burst-per-address", "1000000", "--drain-window", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not become ready in {timeout:.0f} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def local_redis(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/ensure-redis.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )

    def answers() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    try:
        _wait(answers, "redis-server", proc, 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


def stockwire_command() -> list[str]:
    script = Path(sys.executable).with_name("stockwire")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


@contextlib.contextmanager
def local_gateway(redis_url: str, jwt_secret: str, log_path: Path,
                  extra: Sequence[str] = ()) -> Iterator[str]:
    """``stockwire serve`` on a free loopback port; yields its ws:// URL once ready.

    Stopped with SIGTERM (its drain window is 0, so at once).  Before it stops,
    its Prometheus metrics are saved next to the log: drops and slow clients
    show there, not in Locust.
    """
    port = free_port()
    env = {**os.environ, "STOCKWIRE_JWT_SECRET": jwt_secret}
    command = [*stockwire_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--redis-url", redis_url, *LOCAL_GATEWAY_OPTIONS, *extra]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        # Its own session: a Ctrl-C in the terminal must reach Locust (which then
        # checks the screens) but not the gateway they are connected to.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as answer:
                    return bool(answer.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        try:
            _wait(ready, "the gateway", proc, 20)
            yield f"ws://127.0.0.1:{port}"
            with contextlib.suppress(urllib.error.URLError, OSError), \
                    urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
                log_path.with_name("gateway-metrics.txt").write_bytes(answer.read())
        finally:
            _stop(proc)


def _run_locust(command: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(command, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # Locust got the same Ctrl-C: let it stop, check and write its reports.
            continue


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="kol-surge")
    parser.add_argument("--host", default="", help="a running gateway, ws://HOST:PORT (default: start one)")
    parser.add_argument("--redis-url", default="",
                        help="its Redis (needed with --host; default without: start one)")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="--redis-url names a node of a Redis Cluster (the local gateway and the "
                             "stock services use cluster clients)")
    parser.add_argument("--results", default="results", help="folder for the run's reports")
    parser.add_argument("--gateway-args", default="",
                        help="extra `stockwire serve` flags for a local gateway, e.g. '--interval 0.05'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, locust_args = build_parser().parse_known_args(argv)
    if locust_args[:1] == ["--"]:
        locust_args = locust_args[1:]
    if args.host and not args.host.startswith(("ws://", "wss://")):
        print(f"--host must be a ws:// or wss:// URL, got {args.host!r}", file=sys.stderr)
        return 2
    if args.host and not args.redis_url:
        print("--host needs --redis-url: the stock services write to the gateway's Redis",
              file=sys.stderr)
        return 2
    if args.redis_cluster and not args.redis_url:
        print("--redis-cluster needs --redis-url: a node of the cluster", file=sys.stderr)
        return 2
    out = Path(args.results) / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    with contextlib.ExitStack() as stack:
        host, redis_url = args.host, args.redis_url
        cluster = ["--redis-cluster"] if args.redis_cluster else []
        if not host:
            if not redis_url:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stockwire-redis-")))
                redis_url = stack.enter_context(local_redis(workdir))
            env["STOCKWIRE_JWT_SECRET"] = secrets.token_urlsafe(32)
            host = stack.enter_context(local_gateway(redis_url, env["STOCKWIRE_JWT_SECRET"],
                                                     out / "gateway.log",
                                                     [*cluster, *shlex.split(args.gateway_args)]))
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", host, "--redis-url", redis_url, *cluster, "--scenario", args.scenario,
            "--csv", str(out / "locust"), "--html", str(out / "report.html"),
            *locust_args,
        ]
        (out / "command.txt").write_text(shlex.join(command) + "\n")
        print(f"rehearsal {args.scenario}: gateway {host}, redis {redis_url}, reports in {out}/",
              flush=True)
        code = _run_locust(command, env)
    if (out / "locust_stats.csv").exists():
        print(summarize(out))
    print(f"rehearsal {args.scenario}: exit code {code}; reports in {out}/", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
