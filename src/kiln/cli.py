"""The `kiln` command: parses arguments, builds a Context, calls one use case, prints.

No deciding logic lives here."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from typer.core import TyperGroup

from kiln import __version__
from kiln.cli_common import (
    DEFAULT_SPEC,
    EnvOpt,
    JsonOpt,
    SpecFile,
    StrategyOpt,
)
from kiln.cli_common import ctx_of as _ctx
from kiln.cli_common import env_config as _env_config
from kiln.cli_common import load as _load
from kiln.cli_common import report as _report
from kiln.cli_common import strategy_of as _strategy
from kiln.cli_envs import env_app, gc, preview_app, recreate, release_app
from kiln.cli_images import image_app
from kiln.cli_nodes import node_app
from kiln.errors import KilnError, UsageError
from kiln.output import Output

# `kiln --help` lists commands in the order a user meets them, each with one short sentence
# (the whole story is in `kiln COMMAND --help`).
COMMANDS: dict[str, str] = {
    "init": "Write a commented starter kiln.yaml.",
    "validate": "Check kiln.yaml and point at each problem.",
    "bake": "Bake the app image (reused when its inputs are unchanged).",
    "deploy": "Bake, release and roll out with zero downtime.",
    "status": "Show the release in service and each instance's health.",
    "releases": "List an environment's releases, newest first.",
    "rollback": "Put an earlier release back in service.",
    "promote": "Promote an image to the next environment, or a blue-green set.",
    "rollout": "Inspect, resume or abort rollouts.",
    "env": "List, show and compare environments.",
    "recreate": "Run an older release exactly, in a new environment.",
    "preview": "Run a commit in its own short-lived environment.",
    "release": "Export, import and pin release manifests.",
    "events": "Show what happened: rollouts, failures, replacements.",
    "drift": "List tainted instances and why.",
    "agent": "Keep environments at their release, replacing failed instances.",
    "lock": "Inspect or break an environment's lock.",
    "node": "List, drain and activate the nodes of a Swarm cluster.",
    "image": "List VM images; export a release's image for a cloud.",
    "gc": "Remove images and instances nothing needs any more.",
    "destroy": "Remove an environment's instances, router and network.",
    "base": "Bake OS base images from Debian packages.",
    "secret": "Store secrets for `secret:NAME` references, encrypted.",
    "ci": "Run the pipeline for a commit; list, approve, cancel runs.",
    "token": "Create, list and revoke API tokens for `kiln serve`.",
    "serve": "Serve the API, the dashboard, /metrics and webhooks.",
}


class _Commands(TyperGroup):
    """The top-level group: COMMANDS' order and short help lines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, command in self.commands.items():
            command.short_help = COMMANDS.get(name, command.short_help)

    def list_commands(self, ctx: Any) -> list[str]:
        known = [name for name in COMMANDS if name in self.commands]
        return known + sorted(set(self.commands) - set(known))


app = typer.Typer(
    name="kiln",
    cls=_Commands,
    help="Immutable infrastructure with continuous delivery built in.\n\n"
    "Every change is a newly baked image; new instances start from it, pass health checks, "
    "receive traffic, and only then are the old ones drained and removed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
base_app = typer.Typer(help="Bake OS base images from Debian packages (no registry needed).", no_args_is_help=True)
rollout_app = typer.Typer(help="Inspect rollouts, resume one a killed kiln left unfinished, or abort one.", no_args_is_help=True)
app.add_typer(base_app, name="base")
app.add_typer(rollout_app, name="rollout")
lock_app = typer.Typer(help="Inspect or break the lock a kiln process holds while it changes an environment.", no_args_is_help=True)
app.add_typer(lock_app, name="lock")
app.add_typer(env_app, name="env")
app.add_typer(preview_app, name="preview")
app.add_typer(release_app, name="release")
app.add_typer(image_app, name="image")
app.add_typer(node_app, name="node")
from kiln.cli_ci import register as _register_ci  # noqa: E402  (kiln ci, kiln secret, kiln serve)

_register_ci(app)

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
        img = ensure_base(ctx.engine(), base, ctx.out, ctx.settings.home / "tmp")
        results[role] = {"image": img.id, "tag": img.tag, "inputs_hash": img.inputs_hash, "built": img.built}
        if not img.built:
            ctx.out.done(f"{role} base {img.tag} is up to date")
    if json:
        ctx.out.json(results)


@app.command()
def bake(file: SpecFile = DEFAULT_SPEC, json: JsonOpt = False,
         vm: Annotated[bool, typer.Option("--vm", help="Also bake a bootable VM image from the same inputs (build.vm; docs/vm.md): a few minutes the first time.")] = False) -> None:
    """Bake the app image; an image with the same inputs hash is reused without a build."""
    from kiln.bake.baker import bake as do_bake

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    if vm:
        from kiln.bake.vm import VmStore, bake_vm

        got = bake_vm(ctx.engine(), loaded, ctx.out, ctx.settings.home / "tmp", VmStore(ctx.settings.home))
        if json:
            ctx.out.json({"image": got.ref, "disk": str(got.disk), "sha256": got.sha256, "inputs_hash": got.inputs_hash,
                          "app_image": got.app_image, "commit": got.commit, "dirty": got.dirty, "built": got.built})
        elif not got.built:
            ctx.out.done(f"{got.tag} is up to date ({got.disk}); no build needed")
        return
    img = do_bake(ctx.engine(), loaded, ctx.out, ctx.settings.home / "tmp")
    if json:
        ctx.out.json({"image": img.id, "tag": img.tag, "inputs_hash": img.inputs_hash, "commit": img.commit,
                      "dirty": img.dirty, "built": img.built})
    elif not img.built:
        ctx.out.done(f"{img.tag} is up to date ({img.id[:19]}); no build needed")


@app.command()
def deploy(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, strategy: StrategyOpt = None,
           json: JsonOpt = False) -> None:
    """Bake if needed, record a release, and roll it out with zero downtime.

    New instances start beside the old ones and must pass their health check before they get
    traffic; only then are the old ones drained and removed. rolling replaces instances in
    batches (max_surge, max_unavailable); blue-green starts the whole new set on the preview port,
    smoke-checks it and switches all traffic at once; canary moves traffic in steps and aborts when
    the new release answers worse than the old. A release that fails is aborted and the previous
    one keeps serving. Only one change runs per environment at a time (see `kiln lock`); a rollout
    a killed kiln left unfinished is completed or undone first."""
    from kiln.spec.resolve import pick_env
    from kiln.usecases.deploy import deploy as do_deploy

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    env_name = pick_env(loaded.spec, env)
    start = time.monotonic()
    outcome = do_deploy(ctx, loaded, env_name, _strategy(strategy))
    took = time.monotonic() - start
    _report(ctx, outcome, loaded.spec.app, env_name, took, json)


@app.command()
def rollback(
    file: SpecFile = DEFAULT_SPEC,
    env: EnvOpt = None,
    to: Annotated[Optional[int], typer.Option("--to", help="Release number (default: the release that served before the current one).")] = None,
    strategy: StrategyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Put an earlier release's exact image and resolved config back in service (zero downtime).

    The rollback is itself recorded as a new release, noted 'rollback to vN'. It rolls (unless
    --strategy says otherwise); instances of that release a blue-green rollout kept idle are put
    back at once. While a blue-green release waits for promotion, rollback drops it instead."""
    from kiln.spec.resolve import pick_env
    from kiln.usecases.deploy import rollback as do_rollback

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    env_name = pick_env(loaded.spec, env)
    start = time.monotonic()
    outcome = do_rollback(ctx, loaded.spec, env_name, to, _strategy(strategy))
    _report(ctx, outcome, loaded.spec.app, env_name, time.monotonic() - start, json)


@app.command()
def status(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False) -> None:
    """Show the release in service, the router and every instance with its health."""
    from kiln.providers.base import short_image
    from kiln.spec.sizes import format_size
    from kiln.usecases.observe import status as do_status
    from kiln.views import RolloutState, utc

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    st = do_status(ctx, cfg)
    if json:
        ctx.out.json(st)
        return
    rel = st.release
    ctx.out.print(f"[bold]{st.app}/{st.env}[/]  {st.url}  router: {st.router.state}")
    ctx.out.print(f"release: v{rel.number}  image {short_image(rel.image)}  commit {(rel.commit or '-')[:12]}"
                  if rel else "release: none yet (run `kiln deploy`)")
    on_nodes = any(i.node for i in st.instances)
    table = Table("instance", "service", "release", "health", *(("node",) if on_nodes else ()))
    for i in st.instances:
        colour = "green" if i.health == "healthy" else "yellow"
        table.add_row(i.id, i.service, f"v{i.release}", f"[{colour}]{i.health}[/]",
                      *((i.node or "-",) if on_nodes else ()))
    ctx.out.print(table)
    for w in st.waiting:
        hint = "`kiln promote` switches to it" if w.state == RolloutState.PAUSED else "`kiln rollout resume` settles it"
        ctx.out.print(f"[yellow]rollout {w.rollout} to v{w.release} is {w.state} ({w.phase}):[/] {hint}")
    for svc, lim in st.limits.items():
        ctx.out.print(f"limits of {svc}: memory {format_size(lim.memory)}, cpus {lim.cpus:g}, pids {lim.pids}")
    for svc, relax in st.relaxations.items():
        ctx.out.print(f"[yellow]hardening relaxed for {svc}:[/] {', '.join(relax)}")
    agent = st.agent
    if agent.halted:
        ctx.out.print(f"[bold red]self-healing halted[/] by the meltdown guard since {utc(agent.halted.at, 'seconds')}: "
                      f"{agent.halted.why}")
    ctx.out.print(f"agent: {agent.leader} watches it" if agent.leader else
                  "agent: none running (failed instances are not replaced; start `kiln agent`)")


@app.command()
def releases(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False,
             limit: Annotated[int, typer.Option("--limit", "-n", help="How many, newest first.")] = 20) -> None:
    """List the environment's releases, newest first."""
    from kiln.providers.base import short_image
    from kiln.usecases import history

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    rels = history.releases(ctx, cfg.app, cfg.env, limit)
    if json:
        ctx.out.json(rels)
        return
    table = Table("", "release", "state", "image", "commit", "created", "note")
    for r in rels:
        state = r.state
        mark = "▶" if state == "serving" else ""
        commit = (r.commit or "-")[:12] + ("+dirty" if r.dirty else "")
        table.add_row(mark, f"v{r.number}", state, short_image(r.image), commit,
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.note)
    ctx.out.print(table)


@app.command()
def promote(
    file: SpecFile = DEFAULT_SPEC,
    env: EnvOpt = None,
    source: Annotated[Optional[str], typer.Option("--from", help="Environment whose running image is promoted.")] = None,
    target: Annotated[Optional[str], typer.Option("--to", help="Environment that gets it (with --from).")] = None,
    strategy: StrategyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Promote: move an artifact forward, or switch to a waiting blue-green release.

    `kiln promote --from staging --to production` deploys to production exactly the image digest
    staging runs now (no rebuild), with production's overlay, by production's rollout strategy;
    the new release records where it came from. Without --from/--to: switch all traffic to the
    blue-green release waiting on the preview port (`promote: manual`)."""
    from kiln.spec.resolve import pick_env
    from kiln.usecases.deploy import promote as do_promote

    loaded = _load(file)
    ctx = _ctx(quiet=json)
    start = time.monotonic()
    if source or target:
        from kiln.usecases.environments import promote_artifact

        if not (source and target):
            raise UsageError("give both --from and --to (e.g. --from staging --to production).")
        if env:
            raise UsageError("--env does not go with --from/--to.")
        outcome = promote_artifact(ctx, loaded, source, target, _strategy(strategy))
        _report(ctx, outcome, loaded.spec.app, target, time.monotonic() - start, json)
        return
    env_name = pick_env(loaded.spec, env)
    outcome = do_promote(ctx, loaded.spec.app, env_name)
    _report(ctx, outcome, loaded.spec.app, env_name, time.monotonic() - start, json)


@rollout_app.command("list")
def rollout_list(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False,
                 limit: Annotated[int, typer.Option("--limit", "-n", help="How many, newest first.")] = 20) -> None:
    """List the environment's rollouts, newest first: strategy, outcome, duration."""
    from kiln.usecases import history

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    rollouts = history.rollouts(ctx, cfg.app, cfg.env, limit=limit)
    if json:
        ctx.out.json(rollouts)
        return
    table = Table("id", "release", "strategy", "state", "started", "took", "reason")
    for r in rollouts:
        took = f"{r.seconds:.1f}s" if r.seconds is not None else "-"
        table.add_row(str(r.id), f"v{r.from_release or '-'} → v{r.to_release}", r.strategy, r.state,
                      r.started_at.strftime("%Y-%m-%d %H:%M:%S"), took, r.reason[:80])
    ctx.out.print(table)


@rollout_app.command("resume")
def rollout_resume(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False) -> None:
    """Settle a rollout that a killed kiln left unfinished: complete it if traffic had already
    switched to the new release, else undo it. (`kiln deploy` does this first, too.)"""
    from kiln.usecases.deploy import resume
    from kiln.views import Rollout

    _, cfg = _env_config(file, env)
    ctx = _ctx(quiet=json)
    settled = [Rollout.of(r) for r in resume(ctx, cfg.app, cfg.env)]
    if json:
        ctx.out.json(settled)
    elif not settled:
        ctx.out.done(f"no unfinished rollout in {cfg.app}/{cfg.env}")
    else:
        for r in settled:
            ctx.out.done(f"rollout {r.id} to v{r.to_release}: {r.state}")


@rollout_app.command("abort")
def rollout_abort(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False) -> None:
    """Abort the environment's unfinished rollout: a release waiting for promotion is dropped at
    once; a running rollout is asked to stop, and its kiln converges back to the release that served."""
    import getpass

    from kiln.usecases.deploy import abort
    from kiln.views import Rollout

    _, cfg = _env_config(file, env)
    ctx = _ctx(quiet=json)
    r = Rollout.of(abort(ctx, cfg.app, cfg.env, getpass.getuser()))
    if json:
        ctx.out.json(r)
    else:
        ctx.out.done(f"rollout {r.id} to v{r.to_release}: {r.state}" + (f" ({r.reason})" if r.reason else ""))


@rollout_app.command("show")
def rollout_show(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False,
                 rollout_id: Annotated[Optional[int], typer.Argument(help="Rollout id (default: the latest).")] = None) -> None:
    """Show a rollout: from/to release, outcome, reason and every step."""
    from kiln.usecases import history

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    chosen = history.rollout(ctx, cfg.app, cfg.env, rollout_id)
    if json:
        ctx.out.json(chosen)
        return
    ctx.out.print(f"rollout {chosen.id}: v{chosen.from_release or '-'} → v{chosen.to_release}  "
                  f"{chosen.strategy}  [bold]{chosen.state}[/]")
    if chosen.reason:
        ctx.out.print(f"reason: {chosen.reason}")
    for s in chosen.steps:
        took = f"{s.seconds:.2f}s" if s.seconds is not None else ""
        at = f"{s.at:%H:%M:%S.%f}"[:12]
        ctx.out.print(f"  {at}  {s.action:<12} {s.state:<8} {took:>8}  {s.target}  {s.detail}")


@app.command()
def destroy(
    env: Annotated[str, typer.Option("--env", "-e", help="Environment to remove (required).")],
    file: SpecFile = DEFAULT_SPEC,
) -> None:
    """Remove an environment's instances, router and network. Its ledger history stays."""
    from kiln.usecases.destroy import destroy as do_destroy

    loaded, cfg = _env_config(file, env)
    env_name = cfg.env
    ctx = _ctx()
    count = do_destroy(ctx, cfg)
    ctx.out.done(f"destroyed {loaded.spec.app}/{env_name} ({count} containers); its history stays in the ledger")


agent_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
app.add_typer(agent_app, name="agent")


@agent_app.callback()
def agent(
    context: typer.Context,
    file: SpecFile = DEFAULT_SPEC,
    env: Annotated[Optional[list[str]], typer.Option(
        "--env", "-e", help="Environment to watch; repeat for several (default: every environment in kiln.yaml).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Run one reconcile pass over each environment and exit.")] = False,
) -> None:
    """Keep environments exactly at their current release, until stopped (SIGTERM or Ctrl-C).

    Instances that exit, are killed or OOM-killed, or turn unhealthy leave the router at once and
    are replaced from the same release. Tainted instances (files changed outside the declared
    writable paths, a `docker exec`, an image, env or label other than their release's) are
    replaced by a fresh one, or only reported: environments.NAME.agent.drift. If more instances
    fail within a window than environments.NAME.agent.meltdown allows, replacing stops and
    `kiln status` says so. Every action is an event (`kiln events`). One agent leads each
    environment (a lease in the ledger); others stand by. Deploys wait for a pass in progress.

    `kiln agent install` runs it as a systemd service, so the app also comes back by itself after
    a host or dockerd restart."""
    if context.invoked_subcommand:
        return
    import signal

    from kiln.agent.loop import Agent
    from kiln.spec.resolve import pick_env

    loaded = _load(file)
    names = [pick_env(loaded.spec, e) for e in env] if env else list(loaded.spec.environments)
    ctx = _ctx()
    agent_ = Agent(ctx, loaded.spec.app, {n: loaded.spec.environments[n].agent for n in names},
                   {n: loaded.spec.environments[n].engine for n in names})
    signal.signal(signal.SIGTERM, lambda *_: agent_.stop())
    if not once:
        ctx.out.step(f"kiln agent: watching {', '.join(f'{loaded.spec.app}/{n}' for n in names)} (Ctrl-C stops)")
    try:
        agent_.run(once=once)
    except KeyboardInterrupt:
        pass  # run() released the leases on its way out
    if not once:
        ctx.out.done("kiln agent stopped; its leases are released")


@agent_app.command("install")
def agent_install(
    file: SpecFile = DEFAULT_SPEC,
    env: Annotated[Optional[list[str]], typer.Option(
        "--env", "-e", help="Environment to watch; repeat for several (default: every environment in kiln.yaml).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", "--print", help="Print the unit and change nothing.")] = False,
    unit_dir: Annotated[Path, typer.Option("--unit-dir", help="Where to write the unit.")] = Path("/etc/systemd/system"),
) -> None:
    """Run `kiln agent` for this app as a systemd service (kiln-agent-APP.service), started at boot
    and restarted when it exits, so the app comes back by itself after a host or dockerd restart.

    The unit runs this kiln (`PYTHON -m kiln agent -f SPEC`) with this KILN_HOME, DOCKER_HOST and
    ledger. Where systemd runs (/run/systemd/system exists) it is written to --unit-dir, then
    `systemctl daemon-reload` and `systemctl enable --now`; elsewhere the unit is printed with what
    to do instead, and the command exits 1. A ledger URL with a password is refused: set
    KILN_LEDGER_URL_FILE (a 0600 file holding the URL) instead."""
    import os

    from kiln import process
    from kiln.agent import install as inst
    from kiln.settings import Settings
    from kiln.spec.resolve import pick_env

    loaded = _load(file)
    envs = tuple(pick_env(loaded.spec, e) for e in env) if env else ()
    unit = inst.AgentUnit(app=loaded.spec.app, spec=Path(os.path.abspath(loaded.path)), python=os.path.abspath(sys.executable),
                          home=Path(os.path.abspath(Settings.from_env().home)),
                          environment=inst.settings_of(os.environ), envs=envs)
    out = Output()
    if dry_run:
        sys.stdout.write(inst.render(unit))
        return
    if not inst.SYSTEMD_RUNNING.exists():
        sys.stdout.write(inst.render(unit))
        raise KilnError(inst.elsewhere(unit))
    done = inst.install(unit, process.run, unit_dir)
    out.done(f"installed {done.path} and started it ({' ; '.join(' '.join(c) for c in done.commands)}); "
             f"`systemctl status {unit.name}`, `journalctl -u {unit.name}`")


@app.command()
def drift(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False) -> None:
    """List tainted instances and why (exit code 1 when there are any).

    An instance is tainted when its files differ from its image outside the declared writable
    paths (`docker diff`), someone ran `docker exec` in it, or its image, environment, labels or
    hardening differ from its release. `kiln agent` replaces tainted instances (or only reports
    them, per environments.NAME.agent.drift)."""
    from rich.markup import escape

    from kiln.usecases.drift import report

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    found = report(ctx, cfg)
    if json:
        ctx.out.json(found)
    elif not found:
        ctx.out.done(f"no instance of {cfg.app}/{cfg.env} has drifted from its release")
    else:
        for item in found:
            ctx.out.print(f"[bold yellow]{item.instance}[/] ({item.service}, v{item.release}) is tainted:")
            for reason in item.reasons:
                ctx.out.print(f"  - {escape(reason)}")
    if found:
        raise typer.Exit(1)


@app.command()
def events(
    file: SpecFile = DEFAULT_SPEC,
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Only this environment (default: all of the app's).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Keep printing new events as they come (Ctrl-C stops).")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many of the newest events to show first.")] = 50,
    json: JsonOpt = False,
) -> None:
    """Show what happened to the app's environments: rollouts, failures, replacements, drift.

    With --json, one JSON object per line (also with --follow)."""
    import json as jsonlib

    from rich.markup import escape

    from kiln.spec.resolve import pick_env
    from kiln.usecases import history
    from kiln.views import Event

    loaded = _load(file)
    env_name = pick_env(loaded.spec, env) if env else None
    ctx = _ctx()

    def show(batch: list[Event]) -> None:
        for e in batch:
            if json:
                print(jsonlib.dumps(e.to_json()), flush=True)
            else:
                ctx.out.print(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.env:<12} {e.kind:<18} {escape(e.message)}")

    try:
        for batch in history.events(ctx, loaded.spec.app, env_name, limit, follow):
            show(batch)
    except KeyboardInterrupt:
        pass


@lock_app.command("status")
def lock_status(file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False) -> None:
    """Show who holds the environment's lock: holder, reason, since when, last heartbeat, lease.

    A kiln process holds the lock while it changes an environment and renews it by heartbeats.
    A lock whose lease expired (its holder stopped heartbeating) is taken over by the next kiln."""
    from rich.markup import escape

    from kiln.usecases import locks

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    state = locks.status(ctx, cfg.app, cfg.env)
    if json:
        ctx.out.json(state if state.locked else None)
        return
    if not state.locked:
        ctx.out.print(f"{cfg.app}/{cfg.env} is not locked")
        return

    def ago(t: datetime | None) -> str:  # the ledger's times are naive UTC
        if t is None or state.at is None:
            return "-"
        return f"{t.strftime('%Y-%m-%d %H:%M:%S')} UTC ({max(0, (state.at - t).total_seconds()):.0f}s ago)"

    ctx.out.print(f"[bold]{cfg.app}/{cfg.env}[/] is locked by {escape(state.holder or '')}")
    ctx.out.print(f"  reason:          {escape(state.reason or '') or '-'}")
    ctx.out.print(f"  acquired:        {ago(state.acquired_at)}")
    ctx.out.print(f"  last heartbeat:  {ago(state.heartbeat_at)}")
    ctx.out.print(f"  lease:           {state.lease_seconds:g}s, "
                  + ("[yellow]expired[/] (the next kiln takes it over)" if state.expired
                     else f"expires in {state.seconds_left:.0f}s"))


@lock_app.command("release")
def lock_release(
    file: SpecFile = DEFAULT_SPEC,
    env: EnvOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Required: remove the lock whoever holds it.")] = False,
) -> None:
    """Remove the environment's lock, left by a kiln process that is gone (needs --force).

    Only for a holder that no longer runs: if it still runs, it and the next kiln would change
    the environment at once. A holder on this host whose process is gone, or whose lease expired,
    is taken over without this command."""
    from kiln.usecases import locks

    _, cfg = _env_config(file, env)
    ctx = _ctx()
    released = locks.force_release(ctx, cfg.app, cfg.env, force)
    if not released.locked or released.acquired_at is None:
        ctx.out.done(f"{cfg.app}/{cfg.env} is not locked; nothing to release")
        return
    why = f" ({released.reason})" if released.reason else ""
    ctx.out.done(f"released the lock of {cfg.app}/{cfg.env} held by {released.holder}{why} "
                 f"since {released.acquired_at.strftime('%Y-%m-%d %H:%M:%S')} UTC")
    if not released.expired:
        ctx.out.warn("its lease had not expired: if that process still runs, it may still be changing the "
                     "environment (it finds the lock gone at its next heartbeat)")


app.command()(recreate)
app.command()(gc)


def _app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command `argv` names. Typer turns every registered command into a
    click command, evaluating each one's type hints, on every run (a third of a cached `kiln bake`
    under cProfile, which inflates it; interleaved timings without it: ~0.02-0.03 s). Anything else (no command, an option first, a name that is no
    command) gets the whole app, so `kiln --help`, completion and "no such command" stay as they are."""
    import copy

    from typer.main import get_command_name

    name = argv[0] if argv else ""
    commands = [c for c in app.registered_commands
                if (c.name or (get_command_name(c.callback.__name__) if c.callback else None)) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not (commands or groups):
        return app
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return only


def main() -> None:
    try:
        _app_for(sys.argv[1:])()
    except KilnError as exc:
        Output().error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        Output().error("interrupted")
        sys.exit(130)
