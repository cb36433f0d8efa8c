"""The `kiln` command: parses arguments, builds a Context, calls one use case, prints.

No deciding logic lives here."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from kiln import __version__
from kiln.errors import KilnError, UsageError
from kiln.output import Output
from kiln.settings import Settings

app = typer.Typer(
    name="kiln",
    help="Immutable infrastructure with continuous delivery built in.\n\n"
    "Every change is a newly baked image; new instances start from it, pass health checks, "
    "receive traffic, and only then are the old ones drained and removed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
base_app = typer.Typer(help="Bake OS base images from Debian packages (no registry needed).", no_args_is_help=True)
rollout_app = typer.Typer(help="Inspect rollouts.", no_args_is_help=True)
app.add_typer(base_app, name="base")
app.add_typer(rollout_app, name="rollout")

SpecFile = Annotated[Path, typer.Option("--file", "-f", help="Path to kiln.yaml.", show_default=True)]
EnvOpt = Annotated[Optional[str], typer.Option("--env", "-e", help="Environment (default: the first in kiln.yaml).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_SPEC = Path("kiln.yaml")


def _ctx(quiet: bool = False):
    from kiln.context import Context

    return Context(Settings.from_env(), Output(quiet=quiet))


def _load(path: Path):
    from kiln.spec.loader import find_spec, load_spec

    return load_spec(find_spec(path))


def _env_config(path: Path, env: str | None):
    from kiln.spec.resolve import pick_env, resolve

    loaded = _load(path)
    return loaded, resolve(loaded.spec, pick_env(loaded.spec, env))


def _version(value: bool) -> None:
    if value:
        print(f"kiln {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    pass


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write kiln.yaml.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing kiln.yaml.")] = False,
) -> None:
    """Write a commented starter kiln.yaml."""
    from kiln.spec.starter import STARTER

    target = directory / "kiln.yaml"
    if target.exists() and not force:
        raise UsageError(f"{target} already exists.", "Pass --force to overwrite it.")
    directory.mkdir(parents=True, exist_ok=True)
    name = "".join(ch if ch.isalnum() else "-" for ch in directory.resolve().name.lower()).strip("-") or "app"
    if not name[0].isalpha():
        name = "app-" + name
    target.write_text(STARTER.format(app=name[:31]))
    Output().done(f"wrote {target}; check it with `kiln validate`")


@app.command()
def validate(file: SpecFile = DEFAULT_SPEC, json: JsonOpt = False) -> None:
    """Check kiln.yaml; report each problem as FILE:LINE: key.path: problem (exit code 2)."""
    from kiln.spec.resolve import resolve

    loaded = _load(file)
    envs = {name: resolve(loaded.spec, name).model_dump(mode="json") for name in loaded.spec.environments}
    if json:
        Output().json({"valid": True, "file": str(loaded.path), "environments": envs})
    else:
        Output().done(f"{file} is valid: app {loaded.spec.app}, environments {', '.join(envs)}")


@base_app.command("build")
def base_build(file: SpecFile = DEFAULT_SPEC, json: JsonOpt = False) -> None:
    """Bake the spec's base image and the router's (reused when their inputs are unchanged)."""
    from kiln.bake.base import ensure_base
    from kiln.router.haproxy import ROUTER_BASE

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    results = {}
    for role, base in (("app", loaded.spec.build.base), ("router", ROUTER_BASE)):
        img = ensure_base(ctx.docker, base, ctx.out, ctx.settings.home / "tmp")
        results[role] = {"image": img.id, "tag": img.tag, "inputs_hash": img.inputs_hash, "built": img.built}
        if not img.built:
            ctx.out.done(f"{role} base {img.tag} is up to date")
    if json:
        ctx.out.json(results)


@app.command()
def bake(file: SpecFile = DEFAULT_SPEC, json: JsonOpt = False) -> None:
    """Bake the app image; an image with the same inputs hash is reused without a build."""
    from kiln.bake.baker import bake as do_bake

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    img = do_bake(ctx.docker, loaded, ctx.out, ctx.settings.home / "tmp")
    if json:
        ctx.out.json({"image": img.id, "tag": img.tag, "inputs_hash": img.inputs_hash, "commit": img.commit,
                      "dirty": img.dirty, "built": img.built})
    elif not img.built:
        ctx.out.done(f"{img.tag} is up to date ({img.id[:19]}); no build needed")


@app.command()
def deploy(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False) -> None:
    """Bake if needed, record a release, and roll it out with zero downtime.

    New instances start beside the old ones and must pass their health check before they get
    traffic; only then are the old ones drained and removed. A release that fails is aborted
    and the previous one keeps serving."""
    from kiln.spec.resolve import pick_env
    from kiln.usecases.deploy import deploy as do_deploy

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    env_name = pick_env(loaded.spec, env)
    start = time.monotonic()
    outcome = do_deploy(ctx, loaded, env_name)
    took = time.monotonic() - start
    _report(ctx, outcome, loaded.spec.app, env_name, took, json)


@app.command()
def rollback(
    file: SpecFile = DEFAULT_SPEC,
    env: EnvOpt = None,
    to: Annotated[Optional[int], typer.Option("--to", help="Release number (default: the release that served before the current one).")] = None,
    json: JsonOpt = False,
) -> None:
    """Put an earlier release's exact image and resolved config back in service (zero downtime).

    The rollback is itself recorded as a new release, noted 'rollback to vN'."""
    from kiln.spec.resolve import pick_env
    from kiln.usecases.deploy import rollback as do_rollback

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    env_name = pick_env(loaded.spec, env)
    start = time.monotonic()
    outcome = do_rollback(ctx, loaded.spec.app, env_name, to)
    _report(ctx, outcome, loaded.spec.app, env_name, time.monotonic() - start, json)


def _report(ctx, outcome, app_name: str, env: str, took: float, json: bool) -> None:
    from kiln.spec.resolve import EnvConfig

    cfg = EnvConfig.model_validate(outcome.release.config)
    if json:
        ctx.out.json({"app": app_name, "env": env, "release": outcome.release.summary(), "changed": outcome.changed,
                      "url": cfg.url, "seconds": round(took, 3)})
    elif outcome.changed:
        ctx.out.done(f"v{outcome.release.number} of {app_name}/{env} is serving at {cfg.url} ({took:.1f}s)")


@app.command()
def status(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False) -> None:
    """Show the release in service, the router and every instance with its health."""
    from kiln.usecases.observe import status as do_status

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    st = do_status(ctx, cfg)
    if json:
        ctx.out.json(st)
        return
    rel = st["release"]
    ctx.out.print(f"[bold]{st['app']}/{st['env']}[/]  {st['url']}  router: {st['router']['state']}")
    ctx.out.print(f"release: v{rel['number']}  image {rel['image'][:19]}  commit {(rel['commit'] or '-')[:12]}"
                  if rel else "release: none yet (run `kiln deploy`)")
    table = Table("instance", "service", "release", "health")
    for i in st["instances"]:
        colour = "green" if i["health"] == "healthy" else "yellow"
        table.add_row(i["id"], i["service"], f"v{i['release']}", f"[{colour}]{i['health']}[/]")
    ctx.out.print(table)
    for svc, relax in st["relaxations"].items():
        ctx.out.print(f"[yellow]hardening relaxed for {svc}:[/] {', '.join(relax)}")


@app.command()
def releases(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False,
             limit: Annotated[int, typer.Option("--limit", "-n", help="How many, newest first.")] = 20) -> None:
    """List the environment's releases, newest first."""
    _, cfg = _env_config(file, env)
    ctx = _ctx()
    rels = ctx.ledger.releases(cfg.app, cfg.env, limit)
    states = ctx.ledger.release_states(cfg.app, cfg.env)
    if json:
        ctx.out.json([{**r.summary(), "state": states.get(r.number, "recorded")} for r in rels])
        return
    table = Table("", "release", "state", "image", "commit", "created", "note")
    for r in rels:
        state = states.get(r.number, "recorded")
        mark = "▶" if state == "serving" else ""
        commit = (r.commit or "-")[:12] + ("+dirty" if r.dirty else "")
        table.add_row(mark, f"v{r.number}", state, r.image[7:19], commit,
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.note)
    ctx.out.print(table)


@rollout_app.command("show")
def rollout_show(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False,
                 rollout_id: Annotated[Optional[int], typer.Argument(help="Rollout id (default: the latest).")] = None) -> None:
    """Show a rollout: from/to release, outcome, reason and every step."""
    _, cfg = _env_config(file, env)
    ctx = _ctx()
    rollouts = ctx.ledger.rollouts(cfg.app, cfg.env, limit=1000)
    chosen = next((r for r in rollouts if rollout_id is None or r.id == rollout_id), None)
    if chosen is None:
        raise UsageError(f"no rollout {rollout_id if rollout_id else ''} in {cfg.app}/{cfg.env}.".replace("  ", " "))
    steps = ctx.ledger.steps(chosen.id)
    doc = {"id": chosen.id, "from": chosen.from_release, "to": chosen.to_release, "state": chosen.state,
           "reason": chosen.reason, "started_at": chosen.started_at.isoformat() + "Z",
           "finished_at": chosen.finished_at.isoformat() + "Z" if chosen.finished_at else None, "steps": steps}
    if json:
        ctx.out.json(doc)
        return
    ctx.out.print(f"rollout {chosen.id}: v{chosen.from_release or '-'} → v{chosen.to_release}  [bold]{chosen.state}[/]")
    if chosen.reason:
        ctx.out.print(f"reason: {chosen.reason}")
    for s in steps:
        ctx.out.print(f"  {s['at'][11:23]}  {s['action']:<12} {s['state']:<8} {s['target']}  {s['detail']}")


@app.command()
def destroy(
    env: Annotated[str, typer.Option("--env", "-e", help="Environment to remove (required).")],
    file: SpecFile = DEFAULT_SPEC,
) -> None:
    """Remove an environment's instances, router and network. Its ledger history stays."""
    from kiln.spec.resolve import pick_env
    from kiln.usecases.destroy import destroy as do_destroy

    loaded = _load(file)
    env_name = pick_env(loaded.spec, env)
    ctx = _ctx()
    count = do_destroy(ctx, loaded.spec.app, env_name)
    ctx.out.done(f"destroyed {loaded.spec.app}/{env_name} ({count} containers); its history stays in the ledger")


def main() -> None:
    try:
        app()
    except KilnError as exc:
        Output().error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        Output().error("interrupted")
        sys.exit(130)
