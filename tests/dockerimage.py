"""Replay a Dockerfile without Docker: its stages, in order, on this machine.

No Docker engine runs on our machines, so ``tests/test_container.py`` builds
the image the only other honest way: it reads the Dockerfile and does what it
says.  The build context is the repository minus ``.dockerignore``; each stage
gets a filesystem of its own at one fixed path (so a venv built in one stage
and copied into the next keeps working only if it was really copied there);
``COPY`` copies from the context or an earlier stage; ``RUN`` runs with ``sh``
in the stage's ``WORKDIR``, its absolute paths mapped into the stage's
filesystem.  The ``FROM`` images are this machine's own tools: its Python for
``python:*``, its node and npm for ``node:*``.

Two deliberate differences: commands that administer the base system
(``useradd``, ``apt-get``, …) are recorded, not run, since here they would
change this machine; and ``pip --no-cache-dir`` is dropped, so repeated runs
reuse pip's download cache instead of fetching every dependency again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: An absolute path inside a shell command or ENV value ("/opt/x", not "http://h/x").
_ABSOLUTE = re.compile(r"(?<![\w.:/$-])/(?=\w)")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
#: Commands that change the base system rather than build the image's files.
SYSTEM_COMMANDS = frozenset({"useradd", "groupadd", "adduser", "addgroup", "usermod",
                             "apt-get", "apt", "apk", "chown"})


@dataclass
class Instruction:
    name: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, name: str) -> str:
        found = [i.args for i in self.instructions if i.name == name]
        if not found:
            raise LookupError(f"the stage has no {name}")
        return found[-1]


def parse(text: str) -> list[Stage]:
    """Stages and instructions; continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, args = line.partition(" ")
        name, args = name.upper(), " ".join(args.split())
        if name == "FROM":
            words = args.split()
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias))
        else:
            stages[-1].instructions.append(Instruction(name, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array argument (``CMD ["serve"]``), as a list."""
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(v) for v in value]


# -- the build context -------------------------------------------------------------------


def _glob_regex(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: "*" and "?" stay within one path part, "**" spans parts."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(glob[i], re.escape(glob[i])))
            i += 1
    return re.compile("".join(out) + r"\Z")


def ignore_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, _glob_regex(os.path.normpath(line.lstrip("!").strip()).lstrip("/"))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a path inside an ignored directory is ignored."""
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        prefix, verdict = "/".join(parts[:depth]), None
        for negate, regex in rules:
            if regex.match(prefix):
                verdict = not negate
        if verdict:
            return True
    return False


def stage_context(repo: Path, dest: Path) -> Path:
    """What ``docker build`` would send: the repository minus ``.dockerignore``."""
    rules = ignore_rules(repo)
    for folder, dirs, files in os.walk(repo):
        rel = Path(folder).relative_to(repo)
        dirs[:] = [d for d in dirs if not ignored((rel / d).as_posix(), rules)]
        for name in files:
            if not ignored((rel / name).as_posix(), rules):
                target = dest / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, target)
    return dest


# -- replaying the stages ----------------------------------------------------------------


@dataclass
class Built:
    """The final stage: its filesystem, environment (host paths) and metadata."""

    root: Path
    env: dict[str, str]
    stage: Stage
    stages: dict[str, Path]
    #: System commands of every stage that were not run (see the module docstring).
    skipped: list[str]


class Replay:
    """Runs the stages of one Dockerfile; each stage lives at ``root`` while it runs."""

    def __init__(self, dockerfile: Path, context: Path, root: Path, *, timeout: float = 600) -> None:
        self.stages = parse(dockerfile.read_text())
        self.context = context
        self.root = root
        self.timeout = timeout
        self.done: dict[str, Path] = {}
        self.skipped: list[str] = []
        self.shims = root.parent / "shims"
        self.shims.mkdir(exist_ok=True)
        python = self.shims / "python"
        if not python.exists():
            python.symlink_to(getattr(sys, "_base_executable", sys.executable))

    def build(self) -> Built:
        for index, stage in enumerate(self.stages):
            self._check_base(stage.base)
            if self.root.exists():
                shutil.rmtree(self.root)
            self.root.mkdir(parents=True)
            cwd, env = "/", {}
            for inst in stage.instructions:
                if inst.name == "WORKDIR":
                    cwd = os.path.join(cwd, inst.args)
                    self.host(cwd).mkdir(parents=True, exist_ok=True)
                elif inst.name == "ENV":
                    env.update(self._env(inst.args, env))
                elif inst.name == "COPY":
                    self._copy(inst.args, cwd)
                elif inst.name == "RUN":
                    self._run(inst.args, cwd, env)
            if index == len(self.stages) - 1:
                for other in self.done.values():  # the image holds the last stage only
                    shutil.rmtree(other)
                return Built(self.root, env, stage, dict(self.done), self.skipped)
            kept = self.root.with_name(f"{self.root.name}.{stage.name or index}")
            self.root.rename(kept)
            self.done[stage.name or str(index)] = kept
        raise ValueError("the Dockerfile has no stage")

    def host(self, path: str, root: Path | None = None) -> Path:
        return (root or self.root) / path.lstrip("/")

    @staticmethod
    def _check_base(image: str) -> None:
        """This machine stands in for the base image: it must be at least that version."""
        name, _, tag = image.partition(":")
        wanted = tuple(int(n) for n in re.findall(r"\d+", tag.split("-")[0]))
        if name.endswith("python"):
            have = sys.version_info[:len(wanted)]
        elif name.endswith("node"):
            if shutil.which("node") is None or shutil.which("npm") is None:
                raise RuntimeError(f"FROM {image}: node and npm must be installed to replay it")
            version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
            have = tuple(int(n) for n in re.findall(r"\d+", version.stdout))[:len(wanted)]
        else:
            raise NotImplementedError(f"FROM {image}")
        if have < wanted:
            raise RuntimeError(f"FROM {image}: this machine has {have}")

    def _env(self, args: str, current: dict[str, str]) -> dict[str, str]:
        pairs = shlex.split(args)
        if pairs and "=" not in pairs[0]:  # legacy "ENV KEY value"
            pairs = [f"{pairs[0]}={' '.join(pairs[1:])}"]
        out = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            value = _ABSOLUTE.sub(str(self.root) + "/", value)
            out[key] = _VARIABLE.sub(lambda m: current.get(m[1] or m[2], os.environ.get(m[1] or m[2], "")),
                                     value)
        return out

    def _copy(self, args: str, cwd: str) -> None:
        words = exec_form(args) if args.startswith("[") else shlex.split(args)
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        *sources, dest = [w for w in words if not w.startswith("--")]
        origin = self.done[flags["from"]] if "from" in flags else self.context
        target = self.host(os.path.join(cwd, dest))
        into_dir = dest.endswith("/") or len(sources) > 1
        for source in sources:
            src = self.host(source, origin) if "from" in flags else origin / source
            if not src.exists():
                raise FileNotFoundError(f"COPY {args}: {source} is not in the build context")
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            else:
                where = target / src.name if into_dir else target
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, where)

    def _run(self, args: str, cwd: str, env: dict[str, str]) -> None:
        if args.startswith("["):
            raise NotImplementedError("exec-form RUN")
        parts = [part.strip() for part in args.split("&&")]
        self.skipped += [part for part in parts if part.split()[0] in SYSTEM_COMMANDS]
        kept = " && ".join(part for part in parts if part.split()[0] not in SYSTEM_COMMANDS)
        if not kept:
            return
        command = _ABSOLUTE.sub(str(self.root) + "/", kept.replace(" --no-cache-dir", ""))
        run_env = {**os.environ, **env}
        run_env["PATH"] = f"{self.shims}:{run_env.get('PATH', '')}"
        run_env.pop("VIRTUAL_ENV", None)
        done = subprocess.run(["sh", "-c", command], cwd=self.host(cwd), env=run_env,
                              capture_output=True, text=True, timeout=self.timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"RUN {args} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                               f"{done.stderr[-3000:]}")
