"""Environments: list and show them, compare two, promote one's artifact to another, re-create a
past release in a new isolated environment, and previews of a commit that expire.

Environments declared in kiln.yaml are overlays of one definition. Environments kiln makes
(`recreate`, `preview`) are recorded in the ledger with their port (and a preview's end); their
resolved config is their release's, so every command that works on an environment works on them."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import timedelta

from kiln import engines, git, views
from kiln.context import Context
from kiln.errors import KilnError, UsageError
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.ledger.environments import MadeEnv
from kiln.ledger.releases import Release
from kiln.providers.base import INSTANCE, selector
from kiln.spec.envdiff import declared_keys, diff
from kiln.spec.loader import LoadedSpec, load_spec
from kiln.spec.models import NAME_RULE, valid_name
from kiln.spec.models import RolloutPolicy as Policy
from kiln.spec.resolve import EnvConfig, resolve, url_host
from kiln.usecases import catalog
from kiln.usecases.deploy import (
    Artifact,
    Outcome,
    bake_artifact,
    check_secrets,
    locked,
    policy_for,
    ship,
)
from kiln.usecases.destroy import destroy

ENV_NAME_MAX = 40  # container names are kiln-APP-ENV-SERVICE-vN-xxxxxx


# --- which environments there are, and their config ---------------------------------------------


def config_of(ctx: Context, loaded: LoadedSpec, env: str) -> EnvConfig:
    """The resolved config of `env`: from kiln.yaml when it declares it, else (an environment kiln
    made) the config of its release in service."""
    if env in loaded.spec.environments:
        return resolve(loaded.spec, env)
    made = ctx.ledger.environments.get(loaded.spec.app, env)
    release = ctx.ledger.releases.current(loaded.spec.app, env) if made else None
    if release is None:
        known = list(loaded.spec.environments) + [m.env for m in ctx.ledger.environments.of(loaded.spec.app)]
        raise UsageError(f"unknown environment {env!r}.", f"Environments: {', '.join(known)}.")
    return release.env_config()


def listing(ctx: Context, app: str, loaded: LoadedSpec | None) -> list[views.Environment]:
    """Every environment of app: declared ones in kiln.yaml's order, then those kiln made or
    released to (usecases/catalog.py)."""
    made = {m.env: m for m in ctx.ledger.environments.of(app)}
    out = []
    for env in catalog.envs(ctx, app, loaded):
        release = ctx.ledger.releases.current(app, env)
        cfg = release.env_config() if release else catalog.config(ctx, app, loaded, env)
        m = made.get(env)
        out.append(views.Environment(
            env=env, kind=m.kind if m else "declared", url=cfg.url, engine=cfg.engine,
            release=release.number if release else None, image=release.image if release else None,
            origin=(m.origin if m else "") or (release.origin if release else ""),
            expires_at=m.expires_at if m else None, instances={s.name: s.replicas for s in cfg.services}))
    return out


def show(ctx: Context, loaded: LoadedSpec, env: str) -> views.EnvironmentDetail:
    cfg = config_of(ctx, loaded, env)
    release = ctx.ledger.releases.current(cfg.app, env)
    return views.EnvironmentDetail(env=env, config=cfg.model_dump(mode="json"), config_digest=cfg.digest(),
                                   release=views.Release.of(release) if release else None,
                                   declared=sorted(declared_keys(loaded.spec, env)))


# --- comparing two ------------------------------------------------------------------------------


def compare(ctx: Context, loaded: LoadedSpec, a: str, b: str) -> views.EnvDiff:
    """What the two environments run (their releases in service), key by key. They match when
    the image is the same and no difference is one an overlay does not declare."""
    sides = []
    for env in (a, b):
        release = ctx.ledger.releases.current(loaded.spec.app, env)
        cfg = release.env_config() if release else config_of(ctx, loaded, env)
        running: dict[str, int] = {}
        for c in ctx.engine_for(cfg).containers(selector(cfg.app, env, INSTANCE)):
            if c.running:
                running[c.label("service") or "?"] = running.get(c.label("service") or "?", 0) + 1
        sides.append((release.image if release else None, cfg, running))
    (image_a, cfg_a, run_a), (image_b, cfg_b, run_b) = sides
    declared = declared_keys(loaded.spec, a) | declared_keys(loaded.spec, b)
    keys = diff(cfg_a.model_dump(mode="json"), cfg_b.model_dump(mode="json"), declared)
    return views.EnvDiff(
        a=a, b=b, match=image_a is not None and image_a == image_b and all(k.declared for k in keys),
        image=views.ImagePair.of(image_a, image_b), differences=[views.KeyDifference.of(k) for k in keys],
        instances=views.Pair(a=run_a, b=run_b),
        relaxations=views.Pair(a={s.name: list(s.relaxations) for s in cfg_a.services if s.relaxations},
                               b={s.name: list(s.relaxations) for s in cfg_b.services if s.relaxations}))


# --- promotion of the same artifact ---------------------------------------------------------------


def promote_artifact(ctx: Context, loaded: LoadedSpec, source: str, target: str,
                     strategy: str | None = None) -> Outcome:
    """Deploy to `target` exactly the image `source` serves (no bake), with `target`'s overlay and
    rollout strategy. The new release records where it was promoted from."""
    app = loaded.spec.app
    if source == target:
        raise UsageError("--from and --to name the same environment.")
    if target not in loaded.spec.environments:
        raise UsageError(f"{target!r} is not an environment of kiln.yaml; promotion goes to a declared one.",
                         f"Declared: {', '.join(loaded.spec.environments)}.")
    config_of(ctx, loaded, source)  # an unknown source fails here, naming the environments there are
    serving = ctx.ledger.releases.current(app, source)
    if serving is None:
        raise UsageError(f"{app}/{source} has no release in service, so there is nothing to promote.",
                         f"Deploy it first: `kiln deploy -e {source}`.")
    cfg = resolve(loaded.spec, target)
    runs, wants = engines.kind(serving.env_config().engine), engines.kind(cfg.engine)
    if runs.artifact != wants.artifact:
        raise UsageError(f"{app}/{source} runs {runs.artifact}s (engine: {runs.name}) and {target} runs "
                         f"{wants.artifact}s (engine: {wants.name}): promotion moves one artifact unchanged.",
                         f"Deploy the same commit to {target} instead: `kiln deploy -e {target}` bakes its kind from the same inputs.")
    if ctx.engine_for(cfg).image_id(serving.image) is None:
        raise KilnError(f"the image of {source} v{serving.number} ({serving.image[:19]}) is not on {target}'s engine.",
                        "Re-create it first (`kiln recreate`), or deploy a fresh bake.")
    policy = policy_for(loaded.spec, strategy)
    check_secrets(ctx, cfg)
    with locked(ctx, app, target, "promote") as lease:
        artifact = Artifact(serving.image, serving.image_tag, serving.inputs_hash, serving.commit, serving.dirty,
                            origin=f"promoted from {source} v{serving.number}")
        ctx.out.step(f"Promoting {source} v{serving.number} ({serving.image[:19]}) to {target}")
        outcome = ship(ctx, lease, cfg, artifact, loaded.digest, policy)
    ctx.ledger.events.record(app, target, kinds.PROMOTED, f"{source} v{serving.number} → {target} v{outcome.release.number}")
    return outcome


# --- exact re-creation of a past release ------------------------------------------------------------


def recreate(ctx: Context, loaded: LoadedSpec, number: int, source: str, new_env: str,
             port: int | None = None) -> Outcome:
    """Start release `number` of `source` in a new, isolated environment: same image digest (or,
    if the image is gone, a rebake of its recorded commit that must give the same inputs hash) and
    the same resolved config, on its own network and router port."""
    app = loaded.spec.app
    _check_new_env(ctx, loaded, new_env)
    release = ctx.ledger.releases.require(app, source, number)
    old = release.env_config()
    cfg = old.model_copy(update={"env": new_env, "port": port or free_port(old.bind), "preview_port": None})
    check_secrets(ctx, cfg)
    origin = f"{source} v{number}"
    with locked(ctx, app, new_env, "recreate") as lease:
        if ctx.engine_for(cfg).image_id(release.image) is not None:
            artifact = Artifact(release.image, release.image_tag, release.inputs_hash, release.commit, release.dirty)
        else:
            artifact = rebake(ctx, loaded, release)
        ctx.ledger.environments.record(app, new_env, "recreated", cfg.port, origin)
        # A plain rolling start: nothing serves in a new environment yet, so there is nothing to shield.
        return ship(ctx, lease, cfg, replace(artifact, origin=f"recreated from {origin}"), release.spec_digest, Policy())


def rebake(ctx: Context, loaded: LoadedSpec, release: Release) -> Artifact:
    """Bake `release` again from its recorded commit; its inputs hash must come out the same."""
    what = f"{release.env} v{release.number}"
    if not release.commit:
        raise KilnError(f"the image of {what} is gone and it was baked outside a git repository, so its "
                        "inputs cannot be checked out again.", "Nothing can re-create it exactly.")
    if release.dirty:
        raise KilnError(f"the image of {what} is gone and it was baked from a work tree with uncommitted "
                        f"changes (commit {release.commit[:12]} + changes never recorded), so its inputs cannot "
                        "be reproduced.", "Nothing can re-create it exactly.")
    top = git.root(loaded.root)
    if top is None:
        raise UsageError(f"{loaded.path} is not in a git repository, so commit {release.commit[:12]} cannot be "
                         "checked out to rebake it.")
    ctx.out.step(f"The image of {what} is gone; rebaking it from commit {release.commit[:12]}")
    with git.checkout(top, release.commit, ctx.settings.home / "tmp") as tree:
        then = load_spec(tree / loaded.path.resolve().relative_to(top))
        image = bake_artifact(ctx, then, release.env_config().engine)
    if image.inputs_hash != release.inputs_hash:
        raise KilnError(f"rebaking {what} from commit {release.commit[:12]} gave inputs hash {image.inputs_hash[:16]}, "
                        f"not the recorded {release.inputs_hash[:16]}: its inputs cannot be reproduced exactly "
                        "(usually the base image was rebuilt since).", "The rebaked image was not used.")
    ctx.out.done(f"Rebaked {image.tag}: inputs hash {image.inputs_hash[:16]} matches the release")
    return replace(image, commit=release.commit, dirty=False)


def _check_new_env(ctx: Context, loaded: LoadedSpec, env: str) -> None:
    if not valid_name(env, ENV_NAME_MAX):
        raise UsageError(f"{env!r} is not a valid environment name: {NAME_RULE}, at most {ENV_NAME_MAX} characters.")
    if env in loaded.spec.environments:
        raise UsageError(f"{env!r} is declared in kiln.yaml; a re-created release goes to a new environment.",
                         "Choose another name with --env.")
    if ctx.ledger.environments.get(loaded.spec.app, env) is not None:
        raise UsageError(f"environment {env!r} already exists.", f"Remove it first: `kiln destroy -e {env}`.")


def free_port(bind: str) -> int:
    with socket.socket() as sock:
        sock.bind((url_host(bind), 0))
        port: int = sock.getsockname()[1]
        return port


# --- previews ---------------------------------------------------------------------------------------


def preview(ctx: Context, loaded: LoadedSpec, ref: str, ttl: float, base: str | None = None,
            port: int | None = None) -> tuple[MadeEnv, Outcome]:
    """Bake commit `ref` from a clean checkout and run it in its own environment preview-SHA, with
    `base`'s overlay (default: the first environment), until `ttl` seconds from now."""
    app = loaded.spec.app
    top = git.root(loaded.root)
    if top is None:
        raise UsageError(f"{loaded.path} is not in a git repository: a preview bakes a commit.")
    _, sha = git.resolve_ref(top, ref)
    env = f"preview-{sha[:8]}"
    with locked(ctx, app, env, "preview") as lease:
        with git.checkout(top, sha, ctx.settings.home / "tmp") as tree:
            then = load_spec(tree / loaded.path.resolve().relative_to(top))
            if then.spec.app != app:
                raise UsageError(f"at {ref} kiln.yaml names app {then.spec.app!r}, not {app!r}.")
            base_env = base or next(iter(then.spec.environments))
            if base_env not in then.spec.environments:
                raise UsageError(f"kiln.yaml at {ref} has no environment {base_env!r}.")
            image = bake_artifact(ctx, then, then.spec.environments[base_env].engine)
        made = ctx.ledger.environments.get(app, env)
        cfg = resolve(then.spec, base_env).model_copy(update={
            "env": env, "port": port or (made.port if made else free_port(then.spec.environments[base_env].bind)),
            "preview_port": None})
        check_secrets(ctx, cfg)
        made = ctx.ledger.environments.record(app, env, "preview", cfg.port, f"ref {ref} ({sha[:12]})",
                                             expires_at=now() + timedelta(seconds=ttl))
        artifact = replace(image, commit=sha, dirty=False, origin=f"preview of {ref}")
        outcome = ship(ctx, lease, cfg, artifact, then.digest, Policy())
        # Its time counts from when it serves (recorded before too, so that a failed start is pruned).
        made = ctx.ledger.environments.record(app, env, "preview", cfg.port, made.origin,
                                             expires_at=now() + timedelta(seconds=ttl))
    return made, outcome


def prune_previews(ctx: Context, app: str, everything: bool = False) -> list[str]:
    """Destroy previews whose time is up (all of them with `everything`); returns their names."""
    gone = []
    for made in ctx.ledger.environments.of(app):
        if made.kind != "preview" or not (everything or (made.expires_at and made.expires_at <= now())):
            continue
        with locked(ctx, app, made.env, "preview prune"):
            destroy(ctx, catalog.config_of_made(ctx, app, made.env))
        ctx.ledger.events.record(app, made.env, kinds.PREVIEW_PRUNED, f"{made.env} ({made.origin}) removed"
                         + ("" if everything else f"; it expired at {made.expires_at:%Y-%m-%d %H:%M:%S} UTC"))
        gone.append(made.env)
    return gone
