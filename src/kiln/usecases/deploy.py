"""kiln deploy and kiln rollback: record a release, then roll it out with zero downtime.

If the new release fails (an instance exits, or misses its health deadline) the rollout is
aborted: the environment converges back to the release that was serving, and the error says
why. Nothing that was serving is touched before the new instances are healthy."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.bake.baker import bake
from kiln.bake.base import ensure_base
from kiln.context import Context
from kiln.errors import KilnError, RolloutError, UsageError
from kiln.ledger.store import Release
from kiln.rollout.executor import Executor, Target
from kiln.router.haproxy import ROUTER_BASE, Router, network_name
from kiln.spec.loader import LoadedSpec
from kiln.spec.resolve import EnvConfig, resolve


@dataclass(frozen=True)
class Outcome:
    release: Release
    changed: bool  # False when the environment already ran this release, as desired


def deploy(ctx: Context, loaded: LoadedSpec, env: str) -> Outcome:
    cfg = resolve(loaded.spec, env)
    image = bake(ctx.docker, loaded, ctx.out, ctx.settings.home / "tmp")
    router = prepare(ctx, cfg)
    current = ctx.ledger.current_release(cfg.app, env)
    config_digest = cfg.digest()
    if current and current.image == image.id and current.config_digest == config_digest:
        release = current
    else:
        release = ctx.ledger.record_release(
            app=cfg.app, env=env, image=image.id, image_tag=image.tag, inputs_hash=image.inputs_hash,
            config=cfg.model_dump(mode="json"), config_digest=config_digest, spec_digest=loaded.digest,
            commit=image.commit, dirty=image.dirty)
        ctx.out.step(f"Recorded release v{release.number} of {cfg.app}/{env}")
    return roll_out(ctx, router, release, current)


def rollback(ctx: Context, app: str, env: str, to: int | None) -> Outcome:
    current = ctx.ledger.current_release(app, env)
    if current is None:
        raise UsageError(f"{app}/{env} has no release in service, so there is nothing to roll back.")
    if to is None:
        # The release that served before the current one; aborted releases never served.
        states = ctx.ledger.release_states(app, env)
        earlier = [n for n, state in states.items() if state == "served" and n < current.number]
        if not earlier:
            raise UsageError(f"{app}/{env} has no earlier release that served, so there is nothing to roll back to.")
        to = max(earlier)
    target = ctx.ledger.release(app, env, to)
    if target is None:
        raise UsageError(f"{app}/{env} has no release v{to}.", "`kiln releases` lists them.")
    if ctx.docker.image_id(target.image) is None:
        raise KilnError(f"the image of v{to} ({target.image[:19]}) is no longer on this engine.",
                        "Check out its commit and run `kiln deploy` to bake it again.")
    if target.image == current.image and target.config_digest == current.config_digest:
        ctx.out.done(f"v{current.number} already runs the same image and config as v{to}")
        return Outcome(current, changed=False)
    router = prepare(ctx, EnvConfig.model_validate(target.config))
    release = ctx.ledger.record_release(
        app=app, env=env, image=target.image, image_tag=target.image_tag, inputs_hash=target.inputs_hash,
        config=target.config, config_digest=target.config_digest, spec_digest=target.spec_digest,
        commit=target.commit, dirty=target.dirty, note=f"rollback to v{to}")
    ctx.out.step(f"Recorded release v{release.number} (rollback to v{to})")
    return roll_out(ctx, router, release, current)


def router_for(ctx: Context, cfg: EnvConfig) -> Router:
    return Router(ctx.docker, cfg, ctx.settings.router_dir(cfg.app, cfg.env))


def prepare(ctx: Context, cfg: EnvConfig) -> Router:
    """The environment's network and router, before any release is recorded for it."""
    router = router_for(ctx, cfg)
    router_image = ensure_base(ctx.docker, ROUTER_BASE, ctx.out, ctx.settings.home / "tmp")
    ctx.docker.ensure_network(network_name(cfg.app, cfg.env), {"kiln.app": cfg.app, "kiln.env": cfg.env})
    if router.ensure(router_image.id):
        ctx.out.step(f"Router listening on {cfg.url}")
    return router


def roll_out(ctx: Context, router: Router, release: Release, previous: Release | None) -> Outcome:
    target = Target.of(release)
    cfg = target.cfg

    if previous and previous.number == release.number:
        probe_only = Executor(ctx.docker, router, ctx.ledger, ctx.out, rollout_id=0)
        if probe_only.converged(target):
            ctx.out.done(f"Nothing to do: v{release.number} is serving as desired")
            return Outcome(release, changed=False)

    rollout = ctx.ledger.start_rollout(cfg.app, cfg.env, previous.number if previous else None,
                                       release.number, "rolling")
    executor = Executor(ctx.docker, router, ctx.ledger, ctx.out, rollout.id)
    if previous and previous.number != release.number:
        executor.targets[previous.number] = Target.of(previous)
    ctx.ledger.event(cfg.app, cfg.env, "rollout.started", f"rollout {rollout.id} to v{release.number}")
    try:
        executor.converge(target)
    except (KilnError, KeyboardInterrupt) as exc:
        reason = exc.message if isinstance(exc, KilnError) else "interrupted"
        ctx.out.warn(f"Aborting the rollout to v{release.number}: {reason}")
        _abort(ctx, executor, previous, release)
        ctx.ledger.finish_rollout(rollout.id, "aborted", reason)
        ctx.ledger.event(cfg.app, cfg.env, "rollout.aborted", f"rollout {rollout.id} to v{release.number}: {reason}")
        if isinstance(exc, KeyboardInterrupt):
            raise
        kept = f"v{previous.number} keeps serving" if previous else "nothing was serving before"
        raise RolloutError(f"the rollout to v{release.number} was aborted: {reason}", f"{kept}.") from None
    ctx.ledger.finish_rollout(rollout.id, "succeeded")
    ctx.ledger.event(cfg.app, cfg.env, "rollout.succeeded", f"rollout {rollout.id}: v{release.number} serving")
    return Outcome(release, changed=previous is None or previous.number != release.number)


def _abort(ctx: Context, executor: Executor, previous: Release | None, failed: Release) -> None:
    if previous is None:
        empty = Target.of(failed)
        cfg = empty.cfg.model_copy(update={"services": tuple(s.model_copy(update={"replicas": 0})
                                                             for s in empty.cfg.services)})
        executor.converge(Target(failed, cfg), strict=False)
    else:
        executor.converge(Target.of(previous), strict=False)
