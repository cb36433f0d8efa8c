"""A whole kiln world in memory, for fast tests of the use cases and the agent: a Context wired
to the fake engine and fake routers (one per environment, kept across calls, as a real router
container is) and a SQLite ledger in tmp_path; an app directory with kiln.yaml and app.py.

    w = World.make(tmp_path)
    outcome = deploy(w.ctx, w.load(), "production")
    w.engine.kill(name); w.router("production").servers()"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import event

from kiln.bake.base import base_tag
from kiln.bake.inputs import base_inputs_hash
from kiln.context import Context
from kiln.ledger.rollouts import Rollout
from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.providers.base import Engine
from kiln.providers.fake import FakeEngine, FakeRouter
from kiln.settings import Settings
from kiln.spec.loader import LoadedSpec, parse_spec
from kiln.spec.models import Base, Spec
from kiln.spec.resolve import EnvConfig, resolve

SPEC = """\
app: shop
build:
  steps: ["COPY app.py /app/app.py"]
  base: {packages: [python3]}
services:
  web:
    command: [python3, /app/app.py]
    port: 8000
    replicas: 2
    healthcheck: {http: /health, interval: 50ms, deadline: 2s}
    rollout:
      strategy: rolling
  worker:
    command: [python3, /app/app.py, --worker]
    replicas: 1
environments:
  production:
    port: 18080
    preview_port: 19080
  staging:
    port: 18081
    services:
      web: {replicas: 1}
"""


class Said(Output):
    """A quiet Output that keeps what it was told: (kind, message), kind step, done or warn."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.said: list[tuple[str, str]] = []

    def step(self, message: str) -> None:
        self.said.append(("step", message))

    def done(self, message: str) -> None:
        self.said.append(("done", message))

    def warn(self, message: str) -> None:
        self.said.append(("warn", message))

    def of(self, kind: str) -> list[str]:
        return [m for k, m in self.said if k == kind]


class Killed(BaseException):
    """What SIGKILL at a fault point does to kiln: nothing below it catches this."""


def kill_at(point: str, times: int = 1):
    """A stand-in for kiln.faults.point that 'kills' kiln the `times`-th time it reaches `point`."""
    seen = [0]

    def fault(name: str) -> None:
        if name == point:
            seen[0] += 1
            if seen[0] == times:
                raise Killed(name)
    return fault


_TEMPLATE: list[Path] = []  # a ledger with the newest schema, made once per test session
_PARSED: dict[str, Spec] = {}  # kiln.yaml text -> its spec (parse_spec is pure; Spec is frozen)


def new_ledger(path: Path) -> Ledger:
    """A ledger at `path`, copied from a migrated template: migrating costs ~70 ms per database."""
    if not _TEMPLATE:
        where = tempfile.mkdtemp(prefix="kiln-unit-ledger-")
        atexit.register(shutil.rmtree, where, ignore_errors=True)  # the session's tests leave nothing behind
        template = Path(where) / "template.db"
        Ledger(f"sqlite:///{template}").db.engine.dispose()
        _TEMPLATE.append(template)
    with sqlite3.connect(_TEMPLATE[0]) as source, sqlite3.connect(path) as copy:
        source.backup(copy)
    ledger = Ledger(f"sqlite:///{path}")
    # A test's ledger need not survive a power cut: no fsync per commit (it was half the time).
    event.listen(ledger.db.engine, "connect", lambda conn, _record: conn.execute("PRAGMA synchronous=OFF"))
    ledger.db.engine.dispose()  # connections opened before the listener
    return ledger


@dataclass
class World:
    root: Path
    ctx: Context
    engine: FakeEngine
    routers: dict[tuple[str, str], FakeRouter] = field(default_factory=dict)

    @classmethod
    def make(cls, tmp_path: Path, spec: str = SPEC) -> World:
        root = tmp_path / "app"
        root.mkdir()
        (root / "kiln.yaml").write_text(spec)
        (root / "app.py").write_text("print('v1')\n")
        engine = FakeEngine({"kiln.test": "unit"})
        base = Base(packages=("python3",))
        inputs = base_inputs_hash(base)
        engine.add_image(base_tag(inputs), {"kiln.base.inputs": inputs})  # a base baked earlier
        settings = Settings(home=tmp_path / "home", ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
        routers: dict[tuple[str, str], FakeRouter] = {}

        def router_of(_engine: Engine, cfg: EnvConfig) -> FakeRouter:
            router = routers.get((cfg.app, cfg.env))
            if router is None:
                router = routers[cfg.app, cfg.env] = FakeRouter(cfg, engine)
            router.cfg = cfg  # the config of the release in hand, as a new Router object would have
            return router

        ctx = Context(settings, Said(), engines=lambda _name: engine, routers=router_of,
                      _ledger=new_ledger(tmp_path / "ledger.db"))
        return cls(root, ctx, engine, routers)

    @property
    def out(self) -> Said:
        assert isinstance(self.ctx.out, Said)
        return self.ctx.out

    # --- the app ------------------------------------------------------------------------------

    def load(self) -> LoadedSpec:
        """kiln.yaml as load_spec reads it (parsed once per text)."""
        path = self.root / "kiln.yaml"
        raw = path.read_bytes()
        text = raw.decode()
        if text not in _PARSED:
            _PARSED[text] = parse_spec(text, path.name)
        return LoadedSpec(_PARSED[text], path.resolve(), hashlib.sha256(raw).hexdigest())

    def cfg(self, env: str = "production") -> EnvConfig:
        return resolve(self.load().spec, env)

    def change_code(self, text: str) -> None:
        """A new app.py: the next deploy bakes a new image."""
        (self.root / "app.py").write_text(text)

    def edit_spec(self, old: str, new: str) -> None:
        path = self.root / "kiln.yaml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))

    # --- what runs ---------------------------------------------------------------------------

    def router(self, env: str = "production") -> FakeRouter:
        return self.routers["shop", env]

    def instances(self, env: str = "production", service: str | None = None) -> dict[str, int]:
        """Running instances of env (of one service): name -> release number."""
        return {c.name: int(c.label("release") or 0)
                for c in self.engine.containers({"kiln.app": "shop", "kiln.env": env, "kiln.role": "instance"})
                if c.running and (service is None or c.label("service") == service)}

    def serving(self, env: str = "production") -> dict[str, int]:
        """Instances in the router with weight > 0 and up: name -> release number."""
        servers = self.router(env).servers()
        running = self.instances(env)
        return {n: running[n] for n, s in servers.items() if n in running and s.serving and s.weight > 0}

    def containers(self, env: str = "production") -> dict[str, tuple[int, str]]:
        """Every instance container of env, running or not: name -> (release number, state)."""
        return {c.name: (int(c.label("release") or 0), c.state)
                for c in self.engine.containers({"kiln.app": "shop", "kiln.env": env, "kiln.role": "instance"})}

    def weights(self, env: str = "production") -> dict[str, int]:
        """Router servers of env: name -> weight."""
        return {n: s.weight for n, s in self.router(env).servers().items()}

    # --- what the ledger says ------------------------------------------------------------------

    def events(self, env: str = "production", *kinds: str) -> list[tuple[str, str]]:
        """env's events (of these kinds), oldest first: (kind, message)."""
        return [(e.kind, e.message) for e in self.ctx.ledger.events.of("shop", env, kinds=kinds, limit=None)]

    def rollouts(self, env: str = "production") -> list[Rollout]:
        """env's rollouts, oldest first."""
        return list(reversed(self.ctx.ledger.rollouts.of("shop", env, limit=1000)))
