"""What `kiln serve`'s routers share (app.state.plane): the kiln.yaml files it was given (read
again when they change), a Context per server thread for reads (an engine client is not shared
between threads), and this process's readings of the routers (live traffic). Everything it knows
or does goes through a use case: which apps and environments there are (usecases/catalog.py),
the actions, each as a token and recorded as an event naming it (usecases/actions.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from kiln import views
from kiln.access import Token
from kiln.context import Context
from kiln.errors import UsageError
from kiln.router.haproxy_api import ServerStat
from kiln.spec.loader import LoadedSpec, load_spec
from kiln.spec.resolve import EnvConfig
from kiln.usecases import actions, catalog
from kiln.usecases.traffic import Meter


class Plane:
    def __init__(self, ctx: Context, spec_files: list[Path]) -> None:
        self.base = ctx
        self._files: dict[str, Path] = {}  # app -> kiln.yaml
        self._loaded: dict[str, tuple[float, LoadedSpec]] = {}
        for path in spec_files:
            loaded = load_spec(path)
            self._files[loaded.spec.app] = path
            self._loaded[loaded.spec.app] = (path.stat().st_mtime, loaded)
        self._local = threading.local()
        self.meter = Meter()

    def ctx(self) -> Context:
        """This thread's Context for reads."""
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = self._local.ctx = self.base.derive(actions.Said(), own_engines=True)
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

    def specs(self) -> dict[str, LoadedSpec]:
        """Every kiln.yaml serve was given, by app, as it is now."""
        return {app: loaded for app in self._files if (loaded := self.spec(app)) is not None}

    def require_spec(self, app: str) -> LoadedSpec:
        loaded = self.spec(app)
        if loaded is None:
            self.require_app(app)
            raise UsageError(f"kiln serve was not given {app}'s kiln.yaml, which this action needs.",
                             f"Restart it with `kiln serve -f PATH/kiln.yaml` for {app}.")
        return loaded

    def apps(self) -> list[str]:
        return catalog.apps(self.ctx(), self.specs())

    def require_app(self, app: str) -> None:
        catalog.require_app(self.ctx(), self.specs(), app)

    def envs(self, app: str) -> list[str]:
        """app's environments: kiln.yaml's in its order, then those kiln made or released to."""
        self.require_app(app)
        return catalog.envs(self.ctx(), app, self.spec(app))

    def require_env(self, app: str, env: str) -> None:
        self.require_app(app)
        catalog.require_env(self.ctx(), app, self.spec(app), env)

    def config(self, app: str, env: str) -> EnvConfig:
        """The resolved config of app/env: kiln.yaml's overlay, else its release's."""
        return catalog.config(self.ctx(), app, self.spec(app), env)

    def traffic(self, cfg: EnvConfig) -> tuple[dict[str, ServerStat], list[views.Sample]]:
        """The environment's router's servers now, and the live samples of the last minute."""
        return self.meter.read(self.ctx(), cfg)

    # --- actions: one use case each, the CLI's -------------------------------------------------------

    def deploy(self, token: Token, app: str, env: str, image: str, strategy: str | None) -> views.ActionOutcome:
        return actions.deploy(self.base, token, self.require_spec(app), env, image, strategy)

    def rollback(self, token: Token, app: str, env: str, to: int | None, strategy: str | None) -> views.ActionOutcome:
        return actions.rollback(self.base, token, self.require_spec(app), env, to, strategy)

    def promote(self, token: Token, app: str, env: str) -> views.ActionOutcome:
        self.require_env(app, env)
        return actions.promote(self.base, token, app, env)

    def promote_artifact(self, token: Token, app: str, source: str, to: str,
                         strategy: str | None) -> views.ActionOutcome:
        return actions.promote_artifact(self.base, token, self.require_spec(app), source, to, strategy)

    def abort(self, token: Token, app: str, env: str) -> views.AbortOutcome:
        self.require_env(app, env)
        return actions.abort(self.base, token, app, env)

    def ci(self, token: Token, run_id: int, what: str) -> views.CiAction:
        return actions.ci(self.base, token, run_id, what)
