"""`kiln env`, `kiln recreate`, `kiln preview`, `kiln release` and `kiln gc`: environments,
exact re-creation of past releases, previews, manifests, pins and garbage collection."""

from __future__ import annotations

import json as jsonlib
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from kiln.cli_common import (
    DEFAULT_SPEC,
    EnvOpt,
    JsonOpt,
    SpecFile,
    ctx_of,
    env_config,
    load,
    report,
)
from kiln.errors import UsageError
from kiln.spec.durations import parse_duration

env_app = typer.Typer(help="List, show and compare environments (declared, re-created, previews).", no_args_is_help=True)
preview_app = typer.Typer(help="Run a commit in its own short-lived environment; prune expired previews.")
release_app = typer.Typer(help="Export and import release manifests; pin releases against `kiln gc`.", no_args_is_help=True)


# --- kiln env -------------------------------------------------------------------------------------


@env_app.command("list")
def env_list(file: SpecFile = DEFAULT_SPEC, json: JsonOpt = False) -> None:
    """Every environment: those kiln.yaml declares, then re-created ones and previews."""
    from kiln.usecases.environments import listing
    from kiln.views import utc

    loaded = load(file)
    ctx = ctx_of()
    rows = listing(ctx, loaded.spec.app, loaded)
    if json:
        ctx.out.json(rows)
        return
    table = Table("env", "kind", "url", "release", "image", "instances", "origin / expires")
    for r in rows:
        extra = r.origin + (f" (expires {utc(r.expires_at, 'seconds')})" if r.expires_at else "")
        table.add_row(r.env, r.kind, r.url, f"v{r.release}" if r.release else "-",
                      (r.image or "-")[7:19], ", ".join(f"{k}×{v}" for k, v in r.instances.items()), extra)
    ctx.out.print(table)


@env_app.command("show")
def env_show(env: Annotated[str, typer.Argument(help="Environment name.")], file: SpecFile = DEFAULT_SPEC,
             json: JsonOpt = False) -> None:
    """The environment's fully resolved config (what a release of it records) and its release."""
    from kiln.providers.base import short_image
    from kiln.usecases.environments import show

    loaded = load(file)
    ctx = ctx_of()
    doc = show(ctx, loaded, env)
    if json:
        ctx.out.json(doc)
        return
    rel = doc.release
    ctx.out.print(f"[bold]{loaded.spec.app}/{env}[/]  config {doc.config_digest[:16]}  "
                  + (f"release v{rel.number} image {short_image(rel.image)}" if rel else "no release yet"))
    ctx.out.print(escape(jsonlib.dumps(doc.config, indent=2)))


@env_app.command("diff")
def env_diff(
    a: Annotated[str, typer.Argument(help="First environment.")],
    b: Annotated[str, typer.Argument(help="Second environment.")],
    file: SpecFile = DEFAULT_SPEC,
    json: JsonOpt = False,
) -> None:
    """How two environments differ, key by key; exit 1 unless they match.

    Compares what each runs (its release in service): the image digest, every resolved config
    value, running instances and hardening relaxations. Keys an environment overlay declares
    (port, replicas, env values…) are shown but allowed; the environments match when the image is
    the same and nothing else differs."""
    from kiln.providers.base import short_image
    from kiln.usecases.environments import compare

    loaded = load(file)
    ctx = ctx_of()
    d = compare(ctx, loaded, a, b)
    if json:
        ctx.out.json(d)
    else:
        same = d.image.same
        ctx.out.print(f"image      {short_image(d.image.a or 'none')}  {'=' if same else '≠'}  {short_image(d.image.b or 'none')}")
        for k in d.differences:
            mark = "[dim]declared[/]" if k.declared else "[bold red]differs[/]"
            ctx.out.print(f"{escape(k.key):<48} {escape(str(k.a)):<24} {escape(str(k.b)):<24} {mark}")
        ctx.out.print(f"instances  {d.instances.a}  {d.instances.b}")
        for env, relax in ((a, d.relaxations.a), (b, d.relaxations.b)):
            for svc, items in relax.items():
                ctx.out.print(f"[yellow]{env}: hardening relaxed for {svc}:[/] {', '.join(items)}")
        if d.match:
            ctx.out.done(f"{a} and {b} match (apart from the keys their overlays declare)")
        else:
            ctx.out.warn(f"{a} and {b} differ" + ("" if same else " (different images)"))
    if not d.match:
        raise typer.Exit(1)


# --- kiln recreate ----------------------------------------------------------------------------------


def recreate(
    release: Annotated[int, typer.Option("--release", "-r", help="Release number to re-create.")],
    env: Annotated[str, typer.Option("--env", "-e", help="Name of the new environment.")],
    source: Annotated[Optional[str], typer.Option("--from-env", help="Environment the release belongs to (default: the first in kiln.yaml).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Router port of the new environment (default: a free one).")] = None,
    file: SpecFile = DEFAULT_SPEC,
    json: JsonOpt = False,
) -> None:
    """Run an older release exactly, in a new isolated environment (own network and port).

    Same image digest and the same resolved config as release N. If its image is gone from this
    engine, kiln rebakes it from the recorded git commit and checks that the inputs hash matches,
    or says what cannot be reproduced. The original environment is not touched."""
    from kiln.spec.resolve import pick_env
    from kiln.usecases.environments import recreate as do_recreate

    loaded = load(file)
    ctx = ctx_of(quiet=json)
    start = time.monotonic()
    outcome = do_recreate(ctx, loaded, release, pick_env(loaded.spec, source), env, port)
    report(ctx, outcome, loaded.spec.app, env, time.monotonic() - start, json)


# --- kiln preview ------------------------------------------------------------------------------------


@preview_app.callback(invoke_without_command=True)
def preview(
    typer_ctx: typer.Context,
    ref: Annotated[str, typer.Option("--ref", help="Git branch, tag or commit to preview.")] = "HEAD",
    ttl: Annotated[str, typer.Option("--ttl", help="How long it lives, e.g. 30m, 2h.")] = "2h",
    base: Annotated[Optional[str], typer.Option("--from-env", help="Environment whose overlay it uses (default: the first).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Its router port (default: a free one).")] = None,
    file: SpecFile = DEFAULT_SPEC,
    json: JsonOpt = False,
) -> None:
    """Bake a commit from a clean checkout and run it in its own environment (preview-SHA).

    It gets its own network and port, shows in `kiln env list` and `kiln status -e preview-SHA`,
    and is destroyed once its TTL ends: by `kiln agent` when one runs, or `kiln preview prune`."""
    if typer_ctx.invoked_subcommand is not None:
        return
    from kiln.usecases.environments import preview as do_preview
    from kiln.views import MadeEnvironment, Preview, Release

    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        raise UsageError(f"--ttl {ttl!r}: {exc}", "Write it like 30m or 2h.") from None
    loaded = load(file)
    ctx = ctx_of(quiet=json)
    start = time.monotonic()
    made, outcome = do_preview(ctx, loaded, ref, seconds, base, port)
    if json:
        ctx.out.json(Preview(**MadeEnvironment.of(made).model_dump(), release=Release.of(outcome.release),
                             url=outcome.release.env_config().url, seconds=round(time.monotonic() - start, 3)))
    else:
        report(ctx, outcome, loaded.spec.app, made.env, time.monotonic() - start, json)
        ctx.out.done(f"preview {made.env} of {ref} expires at {made.expires_at:%Y-%m-%d %H:%M:%S} UTC")


@preview_app.command("prune")
def preview_prune(
    everything: Annotated[bool, typer.Option("--all", help="Remove every preview, expired or not.")] = False,
    file: SpecFile = DEFAULT_SPEC,
    json: JsonOpt = False,
) -> None:
    """Destroy previews whose TTL has ended (their ledger history stays)."""
    from kiln.usecases.environments import prune_previews

    loaded = load(file)
    ctx = ctx_of(quiet=json)
    gone = prune_previews(ctx, loaded.spec.app, everything)
    if json:
        ctx.out.json({"removed": gone})
    else:
        ctx.out.done(f"removed {', '.join(gone)}" if gone else "no preview to remove")


# --- kiln release ------------------------------------------------------------------------------------


@release_app.command("export")
def release_export(number: Annotated[int, typer.Argument(help="Release number.")], file: SpecFile = DEFAULT_SPEC,
                   env: EnvOpt = None) -> None:
    """Print a portable JSON manifest of release N: image digest, inputs hash, resolved config
    (secrets only as references), provenance and rollout history. `kiln release import` reads it."""
    from kiln.usecases.releases import export

    loaded, cfg = env_config(file, env)
    ctx = ctx_of()
    ctx.out.json(export(ctx, loaded.spec.app, cfg.env, number))


@release_app.command("import")
def release_import(
    manifest: Annotated[Path, typer.Argument(help="Manifest file, or - for stdin.")],
    env: Annotated[Optional[str], typer.Option("--env", "-e", help="Environment to record it in (default: the manifest's).")] = None,
    json: JsonOpt = False,
) -> None:
    """Record a release from a manifest in this ledger (as the next release of that environment),
    so that `kiln recreate` can run it here."""
    from kiln.usecases.releases import import_manifest
    from kiln.views import Release

    text = sys.stdin.read() if str(manifest) == "-" else _read(manifest)
    try:
        doc = jsonlib.loads(text)
    except ValueError as exc:
        raise UsageError(f"{manifest}: not JSON ({exc}).") from None
    ctx = ctx_of(quiet=json)
    release = import_manifest(ctx, doc, env)
    if json:
        ctx.out.json(Release.of(release))
    else:
        ctx.out.done(f"recorded {release.app}/{release.env} v{release.number} ({release.origin})")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}.") from None


@release_app.command("pin")
def release_pin(number: Annotated[int, typer.Argument(help="Release number.")], file: SpecFile = DEFAULT_SPEC,
                env: EnvOpt = None) -> None:
    """Keep release N's image through `kiln gc`, however old it gets."""
    from kiln.usecases.releases import pin

    loaded, cfg = env_config(file, env)
    ctx = ctx_of()
    pin(ctx, loaded.spec.app, cfg.env, number)
    ctx.out.done(f"pinned {loaded.spec.app}/{cfg.env} v{number}")


@release_app.command("unpin")
def release_unpin(number: Annotated[int, typer.Argument(help="Release number.")], file: SpecFile = DEFAULT_SPEC,
                  env: EnvOpt = None) -> None:
    """Let `kiln gc` collect release N's image again once it is old."""
    from kiln.usecases.releases import pin

    loaded, cfg = env_config(file, env)
    ctx = ctx_of()
    pin(ctx, loaded.spec.app, cfg.env, number, on=False)
    ctx.out.done(f"unpinned {loaded.spec.app}/{cfg.env} v{number}")


# --- kiln gc ------------------------------------------------------------------------------------------


def gc(
    keep: Annotated[int, typer.Option("--keep", "-k", min=1, help="Releases kept per environment, newest first.")] = 5,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    file: SpecFile = DEFAULT_SPEC,
    json: JsonOpt = False,
) -> None:
    """Remove the app's images no recent, pinned or serving release needs, and stopped instances.

    Never removes what serves: images of releases in service, of unfinished rollouts and of every
    running instance stay, as do the last --keep releases of each environment and pinned ones."""
    from kiln.usecases.releases import collect

    loaded = load(file)
    ctx = ctx_of(quiet=json)
    result = collect(ctx, loaded.spec.app, keep, dry_run)
    if json:
        ctx.out.json(result)
        return
    verb = "would remove" if dry_run else "removed"
    for i in result.images:
        ctx.out.print(f"{verb} image {i.image[7:19]} {' '.join(i.tags)}")
    for c in result.instances:
        ctx.out.print(f"{verb} stopped instance {c.instance} ({c.state})")
    ctx.out.done(f"{verb} {len(result.images)} images and {len(result.instances)} stopped instances; "
                 f"kept {len(result.kept)} images")
