"""What every benchmark and fault run shares: the heavy-work lock, a private copy of
examples/hello driven through the real kiln CLI, wrk load with failure and gap accounting, and
removal of everything the bench created (by the label kiln.test=bench)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]


def interpreter_of(kiln_exe: str) -> str:
    """The Python of the venv a `kiln` entry point lives in: its sibling in the same bin/
    (whatever the directories above are called, `kiln` included)."""
    return str(Path(kiln_exe).with_name("python"))
EXAMPLE = REPO / "examples" / "hello"
RESULTS = REPO / "bench" / "results"
LABEL = ("kiln.test", "bench")
LABEL_ARG = f"{LABEL[0]}={LABEL[1]}"
HEAVY_LOCK = os.environ.get("BENCH_LOCK", "/tmp/kiln-heavy.lock")
LUA = Path(__file__).with_name("wrk_report.lua")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def flocked(path: Path | str, what: str, wait: float, every: float = 0.5) -> Iterator[float]:
    """Hold an exclusive flock on `path` (waiting at most `wait` seconds); yields the seconds waited."""
    with open(path, "a") as fh:
        began = time.monotonic()
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - began > wait:
                    raise RuntimeError(f"{path} ({what}) still held by another job after {wait:.0f}s") from None
                time.sleep(every)
        try:
            yield time.monotonic() - began
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def heavy(what: str, wait: float = 590) -> Iterator[None]:
    """Hold the machine-wide lock for heavy work (also taken by integration test runs), so two
    heavy jobs never share the 2 cores. Each holder keeps it for one scenario only (minutes)."""
    with flocked(HEAVY_LOCK, "heavy work", wait) as waited:
        log(f"{what}" + (f" (waited {waited:.0f}s for {HEAVY_LOCK})" if waited > 1 else ""))
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*argv: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def engine() -> docker.DockerClient:
    return docker.from_env(timeout=120)


# --- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """wrk's figures for one scenario. max_gap_ms is the longest stretch of wall-clock time in
    which no connection received a 2xx response (10 ms resolution, edges of the run included)."""

    requests: int
    non_2xx: int
    socket_errors: int
    seconds: float
    rps: float
    max_gap_ms: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors

    def row(self) -> dict:
        return {**asdict(self), "failed": self.failed}


class Wrk:
    """wrk sending keep-alive load until stop() (SIGINT: wrk prints its totals and exits)."""

    def __init__(self, url: str, connections: int = 16, threads: int = 2, max_seconds: int = 600) -> None:
        self.started = time.time()
        self.proc = subprocess.Popen(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max_seconds}s", "--latency", "-s", str(LUA), url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> Load:
        stopped = time.time()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        match = re.search(r"^BENCH_JSON (.*)$", out, re.M)
        if not match:
            raise RuntimeError(f"wrk printed no result:\n{out}")
        r = json.loads(match.group(1))
        seconds = r["duration_us"] / 1e6
        if r["ok"]:
            edges = max(r["first_ok_ms"] - self.started * 1000, stopped * 1000 - r["last_ok_ms"] - 10)
            gap = max(r["max_gap_ms"], int(edges))
        else:
            gap = int((stopped - self.started) * 1000)
        errors = {k: r[k] for k in ("connect", "read", "write", "timeout")}
        return Load(requests=r["requests"], non_2xx=r["non2xx"], socket_errors=sum(errors.values()),
                    seconds=round(seconds, 2), rps=round(r["requests"] / seconds, 1) if seconds else 0.0,
                    max_gap_ms=gap, p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000,
                    p999_ms=r["p999_us"] / 1000, errors=errors)


def under_load(url: str, action: Callable[[], object], before: float = 1.0, after: float = 1.0,
               connections: int = 16) -> tuple[Load, object]:
    """Steady wrk load from `before` seconds ahead of `action` until `after` seconds past it."""
    load = Wrk(url, connections=connections)
    time.sleep(before)
    try:
        outcome = action()
    finally:
        time.sleep(after)
        result = load.stop()
    return result, outcome


# --- kiln on a private copy of examples/hello -------------------------------------------------


@dataclass
class Timed:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class BenchApp:
    """A copy of examples/hello with its own app name, ports, KILN_HOME and sqlite ledger."""

    dir: Path
    name: str
    port: int
    preview_port: int
    home: Path
    entry: str = ""  # a module run instead of the kiln command (bench.kiln_noretries: the router without retries)

    @classmethod
    def make(cls, root: Path, name: str, replicas: int = 2, entry: str = "") -> BenchApp:
        target = root / name
        shutil.copytree(EXAMPLE, target)
        app = cls(target, name, free_port(), free_port(), root / f"{name}-home", entry)
        pid = os.getpid()

        def change(data: dict) -> None:
            data["app"] = name
            data["services"]["web"]["replicas"] = replicas
            data["environments"]["production"]["port"] = app.port
            data["environments"]["production"]["preview_port"] = app.preview_port
            data["environments"]["staging"]["port"] = free_port()
        app.edit_spec(change)
        app.set_message(f"bench {pid} start")
        return app

    @property
    def spec(self) -> Path:
        return self.dir / "kiln.yaml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # PYTHONDONTWRITEBYTECODE (set in some sandboxes) would make every kiln command compile
        # kiln's sources again: an installed kiln has its .pyc files, so the bench must too.
        env = {k: v for k, v in os.environ.items() if k not in ("KILN_LEDGER_URL", "KILN_FAULT", "PYTHONDONTWRITEBYTECODE")}
        return {**env, "KILN_HOME": str(self.home), "KILN_EXTRA_LABELS": LABEL_ARG, **(extra or {})}

    def argv(self, *args: str) -> list[str]:
        if self.entry:
            return [str(REPO / ".venv" / "bin" / "python"), "-m", self.entry, *args, "-f", str(self.spec)]
        return [str(REPO / ".venv" / "bin" / "kiln"), *args, "-f", str(self.spec)]

    def python(self) -> str:
        return interpreter_of(self.argv()[0])

    def kiln(self, *args: str, check: bool = True, timeout: float = 300) -> Timed:
        began = time.monotonic()
        proc = subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout)
        took = time.monotonic() - began
        if check and proc.returncode != 0:
            raise RuntimeError(f"kiln {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return Timed(proc.returncode, proc.stdout, proc.stderr, took)

    def kiln_json(self, *args: str) -> object:
        return json.loads(self.kiln(*args, "--json").stdout)

    def popen(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), env=self.env(extra_env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def edit_spec(self, change: Callable[[dict], None]) -> None:
        yaml = YAML()
        data = yaml.load(self.spec)
        change(data)
        yaml.dump(data, self.spec)

    def set_rollout(self, **policy: object) -> None:
        def change(data: dict) -> None:
            data["services"]["web"]["rollout"] = policy
        self.edit_spec(change)

    def set_replicas(self, n: int) -> None:
        def change(data: dict) -> None:
            data["services"]["web"]["replicas"] = n
        self.edit_spec(change)

    def set_healthcheck(self, **fields: object) -> None:
        def change(data: dict) -> None:
            data["services"]["web"]["healthcheck"].update(fields)
        self.edit_spec(change)

    def set_message(self, message: str) -> None:
        path = self.dir / "app.py"
        path.write_text(re.sub(r"^MESSAGE = .*$", f"MESSAGE = {message!r}", path.read_text(), flags=re.M))

    def set_code(self, old: str, new: str) -> None:
        """Make a bad release; restore_code() puts the good code back."""
        path = self.dir / "app.py"
        self._good = getattr(self, "_good", None) or path.read_text()
        if old not in self._good:
            raise ValueError(f"{old!r} not in app.py")
        path.write_text(self._good.replace(old, new, 1))

    def restore_code(self) -> None:
        if getattr(self, "_good", None):
            (self.dir / "app.py").write_text(self._good)
            self._good = None

    @contextmanager
    def agent(self, lead: bool = True) -> Iterator[subprocess.Popen]:
        """`kiln agent` in the background (log: KILN_HOME/agent.log) until the block ends; with
        `lead`, the block starts once it leads the environment."""
        proc = start_background(self, self.argv("agent"), self.home / "agent.log", mode="a")
        try:
            deadline = time.monotonic() + 30
            while lead and not self.kiln_json("status").get("agent", {}).get("leader"):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"kiln agent did not lead {self.name} within 30 s (see {self.home / 'agent.log'})")
                time.sleep(0.5)
            yield proc
        finally:
            stop_background(proc)

    def containers(self) -> list:
        return engine().containers.list(all=True, filters={"label": [LABEL_ARG, f"kiln.app={self.name}"]})

    def image_tag(self) -> str:
        """Bake (cached when unchanged) and return the image's tag."""
        return json.loads(self.kiln("bake", "--json").stdout)["tag"]


# --- background processes and groups ----------------------------------------------------------


def start_background(app: BenchApp, argv: list[str], logfile: Path, mode: str = "w") -> subprocess.Popen:
    """A kiln process of `app` (agent, serve) running until stop_background; its output in `logfile`."""
    with open(logfile, mode) as fh:
        return subprocess.Popen(argv, env=app.env(), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_background(proc: subprocess.Popen) -> int | None:
    """SIGTERM, then SIGKILL after a minute; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def guarded(errors: dict[str, str], name: str, fn: Callable[[], object]) -> object:
    """fn()'s result; if it raises, its traceback is printed and `errors[name]` says what, so one
    group failing still leaves the others' figures."""
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        errors[name] = f"{type(exc).__name__}: {str(exc)[:1500]}"
        return None


# --- removal ----------------------------------------------------------------------------------


def remove_labelled() -> None:
    """Remove every container, network and volume carrying kiln.test=bench, and Swarm services."""
    client = engine()
    selector = {"label": LABEL_ARG}
    try:
        for svc in client.services.list(filters=selector):
            svc.remove()
    except docker.errors.APIError:
        pass  # not a swarm manager: no services
    for c in client.containers.list(all=True, sparse=True, filters=selector):
        try:
            c.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
    for n in client.networks.list(filters=selector):
        try:
            n.remove()
        except docker.errors.APIError as exc:
            log(f"network {n.name} not removed: {exc}")
    for v in client.volumes.list(filters=selector):
        v.remove(force=True)


def remove_images(repositories: list[str], tags: list[str]) -> None:
    """Untag the peers' tags and remove the bench apps' images (kiln bakes kiln/APP:HASH)."""
    client = engine()
    for tag in tags:
        try:
            client.images.remove(tag)
        except docker.errors.APIError:
            pass
    for repo in repositories:
        for image in client.images.list(name=repo):
            try:
                client.images.remove(image.id, force=True)
            except docker.errors.APIError:
                pass


def timed(action: Callable[[], object]) -> float:
    began = time.monotonic()
    action()
    return time.monotonic() - began


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
