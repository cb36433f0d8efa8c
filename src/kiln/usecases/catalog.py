"""Which apps and environments there are, and an environment's resolved config, from the kiln.yaml
files a front end was given (`kiln serve -f`, the CLI's -f) and the ledger: an app is one of those
files' or one with releases; its environments are its kiln.yaml's in their order (without one,
those it released to), then those kiln made (recreated, previews)."""

from __future__ import annotations

from collections.abc import Mapping

from kiln import views
from kiln.context import Context
from kiln.errors import NotFound
from kiln.spec.loader import LoadedSpec
from kiln.spec.resolve import EnvConfig, resolve

Specs = Mapping[str, LoadedSpec]  # app -> its kiln.yaml, as loaded now


def apps(ctx: Context, specs: Specs) -> list[str]:
    return sorted(set(specs) | {app for app, _ in ctx.ledger.releases.everywhere()})


def require_app(ctx: Context, specs: Specs, app: str) -> None:
    if app not in specs and not ctx.ledger.releases.environments(app):
        raise NotFound(f"there is no app {app!r}.", f"Apps: {', '.join(apps(ctx, specs)) or 'none yet'}.")


def envs(ctx: Context, app: str, loaded: LoadedSpec | None) -> list[str]:
    """app's environments: kiln.yaml's in its order, then those kiln made (recreated, previews).
    Without its kiln.yaml (`kiln serve` given none for the app), those it released to stand in
    for the declared ones. With it, releases alone list nothing: a pruned preview or a destroyed
    copy keeps its releases in the ledger, and is gone all the same."""
    declared = list(loaded.spec.environments) if loaded else sorted(ctx.ledger.releases.environments(app))
    made = {m.env for m in ctx.ledger.environments.of(app)}
    return declared + sorted(made - set(declared))


def require_env(ctx: Context, app: str, loaded: LoadedSpec | None, env: str) -> None:
    known = envs(ctx, app, loaded)
    if env not in known:
        raise NotFound(f"{app} has no environment {env!r}.", f"Environments: {', '.join(known)}.")


def config(ctx: Context, app: str, loaded: LoadedSpec | None, env: str) -> EnvConfig:
    """The resolved config of app/env: kiln.yaml's overlay, else its release's (the one in
    service, else its newest); an environment kiln made whose first deploy failed gets an empty
    one, enough to remove what it left."""
    if loaded is not None and env in loaded.spec.environments:
        return resolve(loaded.spec, env)
    release = ctx.ledger.releases.current(app, env) or next(iter(ctx.ledger.releases.of(app, env, limit=1)), None)
    if release is not None:
        return release.env_config()
    require_env(ctx, app, loaded, env)
    return config_of_made(ctx, app, env)


def config_of_made(ctx: Context, app: str, env: str) -> EnvConfig:
    """The config of an environment kiln made: its newest release's; with none (its first deploy
    failed), an empty one on the default engine, enough to remove what it left."""
    release = ctx.ledger.releases.current(app, env) or next(iter(ctx.ledger.releases.of(app, env, limit=1)), None)
    if release is not None:
        return release.env_config()
    made = ctx.ledger.environments.get(app, env)
    return EnvConfig(app=app, env=env, port=made.port if made else 0, bind="127.0.0.1", services=())


def listing(ctx: Context, specs: Specs) -> list[views.App]:
    """Every app with its environments, and whether its kiln.yaml is known (actions need it)."""
    return [views.App(app=a, environments=envs(ctx, a, specs.get(a)), spec=a in specs) for a in apps(ctx, specs)]
