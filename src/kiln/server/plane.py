"""What `kiln serve`'s API and dashboard see and do: the apps (the kiln.yaml files it was given,
and every app the ledger knows), their environments, and the actions, each through the same use
case the CLI calls (which takes the environment's lock) and recorded as an event naming the token
that asked. Reads use one Context per server thread (an engine client is not shared between
threads); each action gets a Context of its own (the lock it holds is its own)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kiln import views
from kiln.access import Token
from kiln.agent.sampling import per_release
from kiln.context import Context
from kiln.errors import KilnError, NotFound, RouterError, UsageError
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.ledger.samples import Sample
from kiln.output import Output
from kiln.router.haproxy_api import ServerStat
from kiln.spec.loader import LoadedSpec, load_spec
from kiln.spec.resolve import EnvConfig

T = TypeVar("T")


class _Quiet(Output):
    """The use cases' progress, kept as the last line said (for an action's answer), not printed."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def step(self, message: str) -> None:
        self.lines.append(message)

    def done(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(message)


@dataclass
class _Reading:
    at: float
    servers: dict[str, ServerStat]


class Plane:
    def __init__(self, ctx: Context, spec_files: list[Path]) -> None:
        self.base = ctx
        self._files = {}  # app -> kiln.yaml
        self._loaded: dict[str, tuple[float, LoadedSpec]] = {}
        for path in spec_files:
            loaded = load_spec(path)
            self._files[loaded.spec.app] = path
            self._loaded[loaded.spec.app] = (path.stat().st_mtime, loaded)
        self._local = threading.local()
        self._readings: dict[tuple[str, str], _Reading] = {}
        self._live: dict[tuple[str, str], list[Sample]] = {}
        self._live_lock = threading.Lock()

    # --- contexts ---------------------------------------------------------------------------------

    def ctx(self) -> Context:
        """This thread's Context for reads."""
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = self.base.derive(_Quiet(), own_engines=True)
        return ctx

    # --- apps and environments -------------------------------------------------------------------

    def spec(self, app: str) -> LoadedSpec | None:
        """app's kiln.yaml as it is now (read again when it changed), if serve was given it."""
        path = self._files.get(app)
        if path is None:
            return None
        mtime = path.stat().st_mtime
        if self._loaded[app][0] != mtime:
            self._loaded[app] = (mtime, load_spec(path))
        return self._loaded[app][1]

    def require_spec(self, app: str) -> LoadedSpec:
        loaded = self.spec(app)
        if loaded is None:
            self.require_app(app)
            raise UsageError(f"kiln serve was not given {app}'s kiln.yaml, which this action needs.",
                             f"Restart it with `kiln serve -f PATH/kiln.yaml` for {app}.")
        return loaded

    def apps(self) -> list[str]:
        return sorted(set(self._files) | {app for app, _ in self.ctx().ledger.releases.everywhere()})

    def require_app(self, app: str) -> None:
        if app not in self._files and not self.ctx().ledger.releases.environments(app):
            raise NotFound(f"there is no app {app!r}.", f"Apps: {', '.join(self.apps()) or 'none yet'}.")

    def envs(self, app: str) -> list[str]:
        """app's environments: kiln.yaml's in its order, then those kiln made or released to."""
        self.require_app(app)
        ctx = self.ctx()
        loaded = self.spec(app)
        declared = list(loaded.spec.environments) if loaded else []
        others = {m.env for m in ctx.ledger.environments.of(app)} | set(ctx.ledger.releases.environments(app))
        return declared + sorted(others - set(declared))

    def config(self, app: str, env: str) -> EnvConfig:
        """The resolved config of app/env: kiln.yaml's overlay, else its release's."""
        ctx = self.ctx()
        loaded = self.spec(app)
        if loaded is not None and env in loaded.spec.environments:
            from kiln.spec.resolve import resolve

            return resolve(loaded.spec, env)
        release = ctx.ledger.releases.current(app, env) or next(iter(ctx.ledger.releases.of(app, env, limit=1)), None)
        if release is None:
            if env not in self.envs(app):
                raise NotFound(f"{app} has no environment {env!r}.", f"Environments: {', '.join(self.envs(app))}.")
            from kiln.usecases.environments import config_of_made

            return config_of_made(ctx, app, env)
        return release.env_config()

    def require_env(self, app: str, env: str) -> None:
        if env not in self.envs(app):
            raise NotFound(f"{app} has no environment {env!r}.", f"Environments: {', '.join(self.envs(app))}.")

    # --- live traffic --------------------------------------------------------------------------------

    def traffic(self, cfg: EnvConfig, servers: dict[str, ServerStat]) -> list[Sample]:
        """Requests/s, 5xx and response time per release since the previous reading of this
        environment's router (a reading at most every second; the samples of the last minute)."""
        key = (cfg.app, cfg.env)
        t = time.monotonic()
        with self._live_lock:
            last = self._readings.get(key)
            if last is not None and t - last.at < 1.0:
                return list(self._live.get(key, []))
            self._readings[key] = _Reading(t, servers)
            if last is None:
                return []
            fresh = per_release(last.servers, servers, t - last.at, now())
            history = [s for s in self._live.get(key, []) if (now() - s.at).total_seconds() < 60] + fresh
            self._live[key] = history
            return list(history)

    def router_servers(self, cfg: EnvConfig) -> dict[str, ServerStat]:
        router = self.ctx().router(cfg)
        facts = router.facts()
        if facts is None or not facts.running:
            return {}
        try:
            return router.servers()
        except RouterError:
            return {}

    # --- actions ---------------------------------------------------------------------------------------

    def act(self, token: Token, app: str, env: str, what: str, do: Callable[[Context], T],
            said: Callable[[T], str]) -> tuple[T, list[str]]:
        """Run one action as `token`, on its own Context: an event names the token and says what
        came of it (or why it failed); KilnErrors go on to the caller. Returns the use case's result
and what it said, ending with that summary."""
        out = _Quiet()
        ctx = self.base.derive(out, own_engines=True)
        who = f"{what} by token {token.name} ({token.role})"
        try:
            result = do(ctx)
        except KilnError as exc:
            ctx.ledger.events.record(app, env, kinds.API_ACTION_FAILED, f"{who} failed: {exc.message}")
            raise
        summary = said(result)
        ctx.ledger.events.record(app, env, kinds.API_ACTION, f"{who}: {summary}")
        return result, out.lines + [summary]


    # the actions the API and the dashboard offer: one use case each, the CLI's
    def deploy(self, token: Token, app: str, env: str, image: str, strategy: str | None) -> tuple[Any, list[str]]:
        from kiln.usecases.deploy import deploy_image

        loaded = self.require_spec(app)
        return self.act(token, app, env, f"deploy {image}",
                        lambda c: deploy_image(c, loaded, env, image, strategy), outcome_said)

    def rollback(self, token: Token, app: str, env: str, to: int | None, strategy: str | None) -> tuple[Any, list[str]]:
        from kiln.usecases.deploy import rollback

        loaded = self.require_spec(app)
        return self.act(token, app, env, f"rollback to v{to}" if to else "rollback",
                        lambda c: rollback(c, loaded.spec, env, to, strategy), outcome_said)

    def promote(self, token: Token, app: str, env: str) -> tuple[Any, list[str]]:
        from kiln.usecases.deploy import promote

        self.require_env(app, env)
        return self.act(token, app, env, "promote", lambda c: promote(c, app, env), outcome_said)

    def promote_artifact(self, token: Token, app: str, source: str, to: str,
                         strategy: str | None) -> tuple[Any, list[str]]:
        from kiln.usecases.environments import promote_artifact

        loaded = self.require_spec(app)
        return self.act(token, app, to, f"promote {source} → {to}",
                        lambda c: promote_artifact(c, loaded, source, to, strategy), outcome_said)

    def abort(self, token: Token, app: str, env: str) -> tuple[Any, list[str]]:
        from kiln.usecases.deploy import abort

        self.require_env(app, env)
        return self.act(token, app, env, "abort", lambda c: abort(c, app, env, f"token {token.name}"),
                        lambda r: f"rollout {r.id} to v{r.to_release} {r.state}")

    def ci(self, token: Token, run_id: int, what: str) -> tuple[Any, list[str]]:
        """Approve or cancel CI run `run_id` (the event goes to the run's app, environment "ci")."""
        from kiln.usecases import ci_runs

        found = ci_runs.run(self.ctx(), run_id)
        do: Callable[[Context], Any] = (lambda c: ci_runs.approve(c, run_id, f"token {token.name}")) \
            if what == "approve" else (lambda c: ci_runs.cancel(c, run_id))
        return self.act(token, found.app or "-", "ci", f"{what} CI run {run_id}", do, lambda _: "done")


def outcome_doc(outcome: Any) -> dict[str, Any]:
    """A deploy/rollback/promote Outcome as JSON."""
    cfg = outcome.release.env_config()
    return {"release": views.Release.of(outcome.release).to_json(), "changed": outcome.changed, "state": outcome.state,
            "url": cfg.url, "preview_url": cfg.preview_url}


def outcome_said(outcome: Any) -> str:
    n = outcome.release.number
    if outcome.state == "paused":
        return f"v{n} waits for promotion"
    return f"v{n} serving" if outcome.changed else f"v{n} already serving"
