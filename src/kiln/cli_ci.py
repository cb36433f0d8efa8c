"""The `kiln ci` and `kiln secret` commands (and the registration of cli_serve's `kiln token` and `kiln serve`): parse, build a Context, call one use
case, print. Registered on the main app by `register(app)` (cli.py)."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from kiln.cli_common import JsonOpt
from kiln.cli_common import ctx_of as _ctx
from kiln.cli_common import ctx_with_policy as _ctx_with_policy
from kiln.errors import UsageError
from kiln.output import Output
from kiln.settings import Settings

if TYPE_CHECKING:  # imported on use
    from kiln.secretstore import SecretStore
    from kiln.views import CiRun

ci_app = typer.Typer(help="Continuous delivery: run the spec's pipeline for a commit; list, inspect, approve, cancel runs.",
                     no_args_is_help=True)
hook_app = typer.Typer(help="Start a run for every push to a git repository.", no_args_is_help=True)
ci_app.add_typer(hook_app, name="hook")
secret_app = typer.Typer(help="Secrets for pipeline steps and `secret:NAME` references, encrypted at rest.",
                         no_args_is_help=True)

SpecFile = Annotated[Path, typer.Option("--file", "-f", help="Path to kiln.yaml (its place in the repository is used).")]
RunArg = Annotated[int, typer.Argument(help="Run number (`kiln ci list`).")]
PolicyOpt = Annotated[Optional[Path], typer.Option(
    "--policy", help="Pipeline policy file: what each ref may deploy, promote, approve and read (default: "
                     "KILN_CI_POLICY, else KILN_HOME/ci-policy.yaml if it exists, else the protected branch's kiln.yaml).")]
policy_app = typer.Typer(help="What each ref's pipeline may do (deploy, promote, skip approval, read secrets), and why.",
                         no_args_is_help=True)
ci_app.add_typer(policy_app, name="policy")


def register(app: typer.Typer) -> None:
    from kiln.cli_serve import serve, token_app

    app.add_typer(ci_app, name="ci")
    app.add_typer(secret_app, name="secret")
    app.add_typer(token_app, name="token")
    app.command("serve")(serve)


# --- kiln ci ------------------------------------------------------------------------------------


@ci_app.command("run")
def ci_run(
    file: SpecFile = Path("kiln.yaml"),
    ref: Annotated[str, typer.Option("--ref", "-r", help="Branch, tag, full ref or commit to run.")] = "HEAD",
    repo: Annotated[Optional[Path], typer.Option("--repo", help="Repository to check out from (default: the one holding kiln.yaml).")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Queue the run and return; a background runner does it.")] = False,
    policy: PolicyOpt = None,
    json: JsonOpt = False,
) -> None:
    """Run the pipeline for one commit, as a server would: a clean checkout of the commit, its
    pipeline checked against what its ref may do (a run asking for more fails before anything
    runs), bake, then the steps; every step's state, timing and log go to the ledger. Exit code 1
    when it fails."""
    from kiln import git
    from kiln.usecases import ci_runs

    ctx = _ctx_with_policy(policy, quiet=json)
    spec_path = file.resolve()
    root = git.repo_root(repo.resolve() if repo else spec_path.parent)
    try:
        spec = str(spec_path.relative_to(root))
    except ValueError:
        spec = str(file)
    full, commit = git.resolve_ref(str(root), ref)
    run = ci_runs.queue(ctx, repo=str(root), spec=spec, ref=full, commit=commit, trigger="cli")
    if detach:
        out = ci_runs.start_runner(ctx, run.id)
        if json:
            ctx.out.json(run)
        else:
            ctx.out.done(f"run {run.id} queued; `kiln ci logs {run.id} --follow` shows it (runner output: {out})")
        return
    ended = ci_runs.work(ctx, run.id)
    if json:
        ctx.out.json(ended)
    _exit_for(ended)


def _exit_for(run: CiRun) -> None:
    from kiln.errors import PipelineError
    from kiln.views import RunState

    if run.state != RunState.SUCCEEDED:
        raise PipelineError(f"run {run.id} {run.state}" + (f": {run.reason}" if run.reason else "."),
                            f"`kiln ci logs {run.id}` has the full log.")


@ci_app.command("work", hidden=True)
def ci_work(run_id: RunArg, policy: PolicyOpt = None) -> None:
    """Be the runner of a queued run (started detached by hooks, webhooks and --detach)."""
    from kiln.usecases import ci_runs

    _exit_for(ci_runs.work(_ctx_with_policy(policy), run_id))


@ci_app.command("list")
def ci_list(json: JsonOpt = False,
            limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs, newest first.")] = 20) -> None:
    """Pipeline runs, newest first: ref, commit, state, trigger."""
    from rich.table import Table

    from kiln.usecases import ci_runs

    ctx = _ctx(quiet=json)
    runs = ci_runs.runs(ctx, limit=limit)
    if json:
        ctx.out.json(runs)
        return
    table = Table("run", "app", "ref", "commit", "state", "trigger", "created", "reason", box=None)
    for r in runs:
        table.add_row(str(r.id), r.app or "-", r.ref, r.commit[:12], r.state, r.trigger,
                      r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.reason)
    ctx.out.print(table)


@ci_app.command("show")
def ci_show(run_id: RunArg, json: JsonOpt = False) -> None:
    """One run: its commit, state, image, and each step's state, time and result."""
    from rich.table import Table

    from kiln.usecases import ci_runs

    ctx = _ctx(quiet=json)
    run = ci_runs.show(ctx, run_id)
    if json:
        ctx.out.json(run)
        return
    ctx.out.print(f"run {run.id}  {run.state}  {run.ref} at {run.commit}  ({run.trigger})")
    if run.image:
        ctx.out.print(f"image {run.image}")
    if run.reason:
        ctx.out.print(f"reason: {run.reason}")
    table = Table("#", "step", "kind", "state", "time", "result", box=None)
    for s in run.steps:
        took = f"{s.seconds:.1f}s" if s.seconds is not None else ""
        table.add_row(str(s.position), s.name, s.kind, s.state, took, s.detail)
    ctx.out.print(table)


@ci_app.command("logs")
def ci_logs(run_id: RunArg,
            follow: Annotated[bool, typer.Option("--follow", "-F", help="Keep printing until the run ends.")] = False) -> None:
    """A run's full log (secrets masked), each line marked with its step."""
    from kiln.usecases import ci_runs

    ctx = _ctx()
    for batch in ci_runs.logs(ctx, run_id, follow):
        for entry in batch:
            print(f"{entry.step[:24]:<24} | {entry.line}")
        sys.stdout.flush()


@ci_app.command("approve")
def ci_approve(run_id: RunArg) -> None:
    """Let a run's waiting manual promotion go ahead."""
    from kiln.usecases import ci_runs

    ctx = _ctx()
    step = ci_runs.approve(ctx, run_id, getpass.getuser())
    ctx.out.done(f"approved step {step.position} ({step.name}) of run {run_id}")


@ci_app.command("cancel")
def ci_cancel(run_id: RunArg) -> None:
    """Cancel a run: a queued one never starts; a running one stops after killing its current
    command (a deploy in progress finishes or aborts on its own first)."""
    from kiln.usecases import ci_runs
    from kiln.views import RunState

    ctx = _ctx()
    run = ci_runs.cancel(ctx, run_id)
    ctx.out.done(f"run {run_id} cancelled" if run.state == RunState.CANCELLED else f"run {run_id} asked to stop")


@ci_app.command("prune")
def ci_prune(
    days: Annotated[int, typer.Option("--days", min=0, help="Forget finished runs and webhook deliveries older than this.")] = 30,
    keep: Annotated[int, typer.Option("--keep", min=1, help="Keep at most this many runs (the newest).")] = 500,
) -> None:
    """Forget old finished runs (their steps and logs) and webhook delivery ids. Each runner also
    does this (30 days, 500 runs) when its run ends. A ref's latest run is always kept."""
    from kiln.usecases import ci_runs

    runs, lines, deliveries = ci_runs.prune(_ctx(), days, keep)
    Output().done(f"pruned {runs} run(s), {lines} log line(s), {deliveries} webhook delivery id(s)")


@policy_app.command("show")
def policy_show(
    file: SpecFile = Path("kiln.yaml"),
    ref: Annotated[str, typer.Option("--ref", "-r", help="Branch, tag, full ref or commit whose rights to show.")] = "HEAD",
    repo: Annotated[Optional[Path], typer.Option("--repo", help="Repository runs check out from (default: the one holding kiln.yaml).")] = None,
    policy: PolicyOpt = None,
    json: JsonOpt = False,
) -> None:
    """What a run of REF may do (deploy, promote, promote without approval, read secrets) and
    where that comes from: the policy file, or the kiln.yaml of the protected branch. A run whose
    own pipeline asks for more fails before anything runs."""
    from kiln import git
    from kiln.ci.policy import trust_for

    ctx = _ctx_with_policy(policy, quiet=json)
    root = git.repo_root(repo.resolve() if repo else file.resolve().parent)
    try:
        spec = str(file.resolve().relative_to(root))
    except ValueError:
        spec = str(file)
    full, commit = git.resolve_ref(str(root), ref)
    trust = trust_for(ctx.settings, str(root), spec, full, commit)
    if json:
        ctx.out.json({**trust.summary(), "commit": commit, "repo": str(root)})
        return
    ctx.out.print(f"{full} at {commit[:12]} in {root}")
    for line in trust.lines():
        ctx.out.print(f"  {line}")


@hook_app.command("install")
def hook_install(
    repo: Annotated[Path, typer.Option("--repo", help="The (bare) repository pushes go to.")] = Path("."),
    spec: Annotated[str, typer.Option("--spec", help="kiln.yaml's path inside the repository.")] = "kiln.yaml",
    force: Annotated[bool, typer.Option("--force", help="Replace a post-receive hook that is not kiln's.")] = False,
    policy: PolicyOpt = None,
) -> None:
    """Write a post-receive hook: every push starts a run for each pushed ref (in the background;
    one run per ref at a time, a newer push supersedes the queued older one). What each ref may
    do comes from the policy file, else from the kiln.yaml of the repository's default branch."""
    from kiln import git
    from kiln.ci import hook

    root = git.repo_root(repo.resolve())
    environ = dict(os.environ)
    if policy is not None:
        if not policy.is_file():
            raise UsageError(f"the policy file {policy} does not exist.", "Write it first (docs/ci.md, Trust).")
        environ["KILN_CI_POLICY"] = str(policy.expanduser().resolve())
    target = hook.install(root, spec, environ, force=force)
    out = Output()
    out.done(f"wrote {target}; pushes to {root} now start pipeline runs (`kiln ci list`)")
    if environ.get("KILN_CI_POLICY"):
        out.step(f"what each ref may do: the policy file {environ['KILN_CI_POLICY']}")
    else:
        branch, how = git.default_branch(root)
        if branch is None:
            out.warn(f"no protected branch ({how}): until one is set, runs may deploy nowhere and read no secret "
                     "(docs/ci.md, Trust).")
        elif git.tip(root, f"refs/heads/{branch}") is None:
            out.warn(f"the protected branch is {branch} ({how}), which does not exist yet: until it is pushed, other "
                     f"refs may deploy nowhere and read no secret. If pushes go to another default branch, say so: "
                     f"`git -C {root} symbolic-ref HEAD refs/heads/NAME` (docs/ci.md, Trust).")
        else:
            out.step(f"the protected branch is {branch} ({how}): its kiln.yaml says what other refs may do "
                     "(`kiln ci policy show --ref REF`)")


@hook_app.command("receive", hidden=True)
def hook_receive(
    repo: Annotated[Path, typer.Option("--repo")],
    spec: Annotated[str, typer.Option("--spec")] = "kiln.yaml",
) -> None:
    """Called by the post-receive hook with git's "old new ref" lines on stdin: each pushed ref
    goes through the same admission as a webhook's push (usecases/pushes.py): a commit its ref
    already ran, or one older than the ref's last run, starts nothing."""
    from kiln.ci.trigger import pushed_refs
    from kiln.errors import PushRefused
    from kiln.usecases import pushes

    for key in [k for k in os.environ if k.startswith("GIT_")]:
        del os.environ[key]  # the hook's GIT_DIR would point the runner's git at the bare repository
    ctx = _ctx()
    for ref, commit in pushed_refs(sys.stdin.read()):
        try:
            got = pushes.admit(ctx, repo=str(repo), spec=spec, source="hook", push=pushes.Pushed(ref, commit))
        except (PushRefused, UsageError) as exc:
            print(f"kiln: no run for {ref} ({commit[:12]}): {exc.message}")
            continue
        print(f"kiln: run {got.run} queued for {ref} ({commit[:12]}); kiln ci logs {got.run} --follow")


def _secrets() -> SecretStore:
    from kiln.secretstore import SecretStore

    return SecretStore(Settings.from_env())


@secret_app.command("set")
def secret_set(name: Annotated[str, typer.Argument(help="Secret name: lowercase letters, digits, '-', '_', '.'.")]) -> None:
    """Store a secret, encrypted. The value is read from stdin (or asked for on a terminal), never
    from the command line, where it would show in `ps` and shell history."""
    from kiln.secretstore import check_name

    check_name(name)
    if sys.stdin.isatty():
        value = typer.prompt(f"value of {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise UsageError(f"no value given for secret {name!r}.", f"Pipe it in: `printf %s \"$VALUE\" | kiln secret set {name}`.")
    _secrets().set(name, value)
    Output().done(f"secret {name} stored (encrypted); refer to it as secret:{name}")


@secret_app.command("list")
def secret_list(json: JsonOpt = False) -> None:
    """Names of the stored secrets (never their values)."""
    names = _secrets().names()
    if json:
        Output().json(names)
    else:
        for name in names:
            print(name)


@secret_app.command("delete")
def secret_delete(name: Annotated[str, typer.Argument(help="Secret name.")]) -> None:
    """Remove a stored secret."""
    if not _secrets().delete(name):
        raise UsageError(f"there is no secret {name!r}.", "`kiln secret list` shows the stored ones.")
    Output().done(f"secret {name} deleted")
