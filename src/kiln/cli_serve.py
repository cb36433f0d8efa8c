"""The `kiln token` and `kiln serve` commands: parse, build a Context, call, print. Registered on
the main app by cli_ci.register."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from kiln.cli_common import JsonOpt, ctx_with_policy
from kiln.cli_common import ctx_of as _ctx
from kiln.errors import UsageError

if TYPE_CHECKING:
    from kiln.context import Context
    from kiln.server.hooks import Config

token_app = typer.Typer(help="API tokens for `kiln serve`: viewers read, deployers act on their environments, "
                             "admins manage tokens. Only a token's SHA-256 is stored.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what the token is for (named in the events of its actions).")],
    role: Annotated[str, typer.Option("--role", "-r", help="viewer, deployer or admin.")] = "viewer",
    env: Annotated[Optional[list[str]], typer.Option(
        "--env", "-e", help="An environment a deployer may act on; repeat for several (default: every one).")] = None,
    json: JsonOpt = False,
) -> None:
    """Make an API token and print it, once: kiln keeps only its SHA-256, so it cannot be shown
    again (revoke it and make another if it is lost)."""
    from kiln.usecases import tokens

    envs = tuple(env or ())
    ctx = _ctx(quiet=json)
    made = tokens.create(ctx, name, role, envs)
    if json:
        ctx.out.json(made)
        return
    print(made.token)
    where = f" on {', '.join(envs)}" if envs else ""
    ctx.out.done(f"token {name} ({role}{where}) made; it is shown only this once. Sign in to the dashboard "
                 f"with it, or send it as `Authorization: Bearer TOKEN`.")


@token_app.command("list")
def token_list(json: JsonOpt = False) -> None:
    """Tokens by name, with role, environments and last use (never their values)."""
    from rich.table import Table

    from kiln.usecases import tokens

    ctx = _ctx(quiet=json)
    listed = tokens.listing(ctx)
    if json:
        ctx.out.json(listed)
        return
    table = Table("name", "role", "environments", "created", "last used", box=None)
    for t in listed:
        table.add_row(t.name, t.role, ", ".join(t.envs) or ("every one" if t.role != "viewer" else "-"),
                      t.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      t.last_used_at.strftime("%Y-%m-%d %H:%M:%S") if t.last_used_at else "never")
    ctx.out.print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="Token name (`kiln token list`).")]) -> None:
    """Revoke a token: requests with it are refused (401) from now on."""
    from kiln.usecases import tokens

    ctx = _ctx()
    tokens.revoke(ctx, name)
    ctx.out.done(f"token {name} revoked")


def serve(
    file: Annotated[Optional[list[Path]], typer.Option(
        "--file", "-f", help="A kiln.yaml whose app the API and dashboard may act on; repeat for several "
                             "(default: ./kiln.yaml if there is one). Apps the ledger knows are shown either way.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 8600,
    repo: Annotated[Optional[Path], typer.Option("--repo", help="Serve webhooks: the local repository (or mirror) runs check out from.")] = None,
    spec: Annotated[str, typer.Option("--spec", help="kiln.yaml's path inside the webhooks' repository.")] = "kiln.yaml",
    github_secret: Annotated[str, typer.Option("--github-secret", "--secret", help="Name of the stored secret GitHub signs webhooks with (HMAC-SHA256); GitHub's endpoint is served only when it is set.")] = "webhook",
    gitlab_secret: Annotated[str, typer.Option("--gitlab-secret", help="Name of the stored token GitLab sends (X-Gitlab-Token), another than GitHub's; GitLab's endpoint is served only when it is set.")] = "gitlab-token",
    policy: Annotated[Optional[Path], typer.Option("--policy", help="Pipeline policy file for webhook runs (see `kiln ci run --help`).")] = None,
) -> None:
    """Serve the control plane: the HTTP API under /api/v1 (OpenAPI at /api/openapi.json), the
    dashboard at / and /metrics (Prometheus), each behind an API token (`kiln token create`).

    With --repo, also webhooks: POST /hooks/github (if GitHub's secret is set) and /hooks/gitlab
    (if GitLab's token is set) accept push events, check their signature (HMAC-SHA256 of the raw
    body) or token in constant time, refuse a delivery id seen before, and queue a run for the
    pushed ref (401 and nothing runs when the check fails)."""
    import uvicorn

    from kiln.server.app import make_app
    from kiln.server.plane import Plane
    from kiln.spec.loader import find_spec

    ctx = ctx_with_policy(policy)
    files = [find_spec(f) for f in file] if file else ([Path("kiln.yaml")] if Path("kiln.yaml").is_file() else [])
    plane = Plane(ctx, files)
    config = _webhooks(ctx, repo, spec, github_secret, gitlab_secret) if repo else None
    where = f"http://{host}:{port}"
    ctx.out.step(f"kiln serve: dashboard {where}/ · API {where}/api/v1 (OpenAPI {where}/api/openapi.json) · "
                 f"metrics {where}/metrics · apps: {', '.join(plane.apps()) or 'none yet'}")
    if config is not None:
        hooks = " and ".join(f"{where}/hooks/{name}" for name, key in (("github", config.github), ("gitlab", config.gitlab))
                             if key)
        ctx.out.step(f"kiln serve: webhooks for {config.repo} on {hooks}")
    from kiln.usecases import tokens

    if not tokens.listing(ctx):
        ctx.out.warn("there is no API token yet: make one with `kiln token create NAME --role admin`")
    uvicorn.run(make_app(ctx, config, plane=plane), host=host, port=port, log_level="warning")


def _webhooks(ctx: Context, repo: Path, spec: str, github_secret: str, gitlab_secret: str) -> Config:
    from kiln import git, secretstore
    from kiln.ci.policy import load_policy, record_webhook_secrets
    from kiln.server.hooks import Config

    load_policy(ctx.settings)  # a wrong policy file stops the server now, not each run
    record_webhook_secrets(ctx.settings, [github_secret, gitlab_secret])  # no pipeline may read them
    root = git.repo_root(repo.resolve())
    github = secretstore.lookup(ctx.settings, github_secret) or None
    gitlab = secretstore.lookup(ctx.settings, gitlab_secret) or None
    if not github and not gitlab:
        raise UsageError(f"neither secret {github_secret!r} (GitHub) nor {gitlab_secret!r} (GitLab) is set, so no "
                         "webhook could be verified.",
                         f"Store one first: `kiln secret set {github_secret}` or `kiln secret set {gitlab_secret}` "
                         "(value on stdin; one per provider).")
    return Config(repo=str(root), spec=spec, github=github, gitlab=gitlab)
