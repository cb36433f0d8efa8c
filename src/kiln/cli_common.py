"""What every `kiln` command module shares: option types, building a Context, loading the spec,
resolving an environment, and reporting the outcome of a change."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from kiln.output import Output
from kiln.settings import Settings

if TYPE_CHECKING:  # imported on use: the CLI starts without them
    from kiln.context import Context
    from kiln.spec.loader import LoadedSpec
    from kiln.spec.resolve import EnvConfig
    from kiln.usecases.deploy import Outcome

SpecFile = Annotated[Path, typer.Option("--file", "-f", help="Path to kiln.yaml.", show_default=True)]
EnvOpt = Annotated[Optional[str], typer.Option("--env", "-e", help="Environment (default: the first in kiln.yaml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
StrategyOpt = Annotated[Optional[str], typer.Option(
    "--strategy", "-s", help="rolling, blue-green or canary, instead of the spec's rollout.strategy for this run.")]
DEFAULT_SPEC = Path("kiln.yaml")


def ctx_of(quiet: bool = False, settings: Settings | None = None) -> Context:
    """A Context with `settings` (default: the environment's), made once per command."""
    from kiln.context import Context

    return Context(settings or Settings.from_env(), Output(quiet=quiet))


def ctx_with_policy(policy: Path | None, quiet: bool = False) -> Context:
    """A Context whose settings name --policy FILE as the pipeline policy (runners it starts get
    it too): the settings are made so before the Context is, never changed on it."""
    settings = Settings.from_env()
    if policy is not None:
        from dataclasses import replace

        settings = replace(settings, ci_policy=policy.expanduser().resolve())
    return ctx_of(quiet, settings)


def load(path: Path) -> LoadedSpec:
    from kiln.spec.loader import find_spec, load_spec

    return load_spec(find_spec(path))


def env_config(path: Path, env: str | None) -> tuple[LoadedSpec, EnvConfig]:
    """The spec and the resolved config of `env` (declared in kiln.yaml, or made by kiln: a
    re-created release or a preview, whose config is its release's)."""
    from kiln.spec.resolve import pick_env, resolve

    loaded = load(path)
    if env is None or env in loaded.spec.environments:
        return loaded, resolve(loaded.spec, pick_env(loaded.spec, env))
    from kiln.usecases.environments import config_of

    return loaded, config_of(ctx_of(), loaded, env)


def strategy_of(value: str | None) -> str | None:
    """--strategy checked against the spec's strategies (spec/models.py, the one list of them)."""
    from kiln.spec.models import strategy_of as checked

    return checked(value)


def report(ctx: Context, outcome: Outcome, app_name: str, env: str, took: float, json: bool) -> None:
    from kiln.views import Report, RolloutState

    shown = Report(**Report.fields_of(outcome), app=app_name, env=env, seconds=round(took, 3))
    if json:
        ctx.out.json(shown)
    elif shown.state == RolloutState.PAUSED:
        pass  # the rollout said where the release waits and how to promote it
    elif shown.changed:
        ctx.out.done(f"v{shown.release.number} of {app_name}/{env} is serving at {shown.url} ({took:.1f}s)")
