"""kiln deploy, rollback, promote and rollout resume: change what an environment serves.

Every change holds the environment's lock, first settles any rollout a killed kiln left
unfinished, then records (or reuses) a release and runs a rollout by the chosen strategy. The
lock's `Lease` goes, as an argument, to everything that changes the environment under it.
If the new release fails (an instance exits or misses its health deadline, a hook or smoke
check fails, a canary is worse than its baseline) the rollout is aborted: the environment
converges back to the release that was serving and the error says why. Nothing that serves
is touched before the new instances are healthy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import assert_never

from kiln import engines, secretref
from kiln.context import Context
from kiln.errors import KilnError, LedgerError, LockLost, PortInUse, RolloutError, UsageError
from kiln.ledger import kinds
from kiln.ledger.kinds import PAUSED, RolloutState
from kiln.ledger.releases import Release
from kiln.ledger.rollouts import Rollout
from kiln.providers.base import HOOK, network_name, selector, short_image
from kiln.rollout.driver import Driver, Progress
from kiln.rollout.executor import Executor, ExecutorOptions, Target
from kiln.rollout.lock import Lease, hold
from kiln.rollout.strategy import phases, resume_forward
from kiln.router.base import Router
from kiln.spec.loader import LoadedSpec
from kiln.spec.models import RolloutPolicy as Policy
from kiln.spec.models import Spec
from kiln.spec.resolve import EnvConfig, resolve, url_host


@dataclass(frozen=True)
class Outcome:
    release: Release
    changed: bool  # False when the environment already ran this release, as desired
    state: RolloutState = kinds.SUCCEEDED  # or PAUSED: a blue-green release waits for `kiln promote`


def policy_for(spec: Spec, strategy: str | None) -> Policy:
    """The public service's rollout policy (the first service's without one), with the strategy
    of this deploy if one was given."""
    name = spec.public_service or next(iter(spec.services))
    policy = spec.services[name].rollout
    return policy.model_copy(update={"strategy": strategy}) if strategy else policy


@dataclass(frozen=True)
class Artifact:
    """An image to release, with where it came from."""

    image: str  # the image id, or repository@sha256:… once pushed to a registry (cluster engines)
    tag: str
    inputs_hash: str
    commit: str | None
    dirty: bool
    origin: str = ""  # "" when baked for this deploy; "promoted from staging v4", "recreated from …"


def deploy(ctx: Context, loaded: LoadedSpec, env: str, strategy: str | None = None) -> Outcome:
    cfg = resolve(loaded.spec, env)
    policy = policy_for(loaded.spec, strategy)
    _check_policy(policy, cfg)
    check_secrets(ctx, cfg)
    # Locked before the bake, so that a second deploy fails at once instead of after its build;
    # and the router's ports checked, so that a doomed deploy fails before it bakes.
    with locked(ctx, cfg.app, env, "deploy") as lease:
        with ports_named(ctx, cfg):
            ctx.router(cfg).check()
        return ship(ctx, lease, cfg, bake_artifact(ctx, loaded, cfg.engine), loaded.digest, policy)


def bake_artifact(ctx: Context, loaded: LoadedSpec, engine: str) -> Artifact:
    """What an environment on `engine` runs, baked from `loaded` (or found by its inputs) by the
    engine's own builder: the app image, or on an engine of VMs the VM image of the same inputs."""
    baked = engines.kind(engine).bake(ctx.engine(engine), loaded, ctx.out, ctx.settings.home / "tmp", ctx.settings.home)
    return Artifact(baked.image, baked.tag, baked.inputs_hash, baked.commit, baked.dirty)


def deploy_image(ctx: Context, loaded: LoadedSpec, env: str, image: str, strategy: str | None = None) -> Outcome:
    """Deploy an image already baked (no bake): one a release of the app recorded, in any of its
    environments, named by its image id, its registry reference or its tag."""
    cfg = resolve(loaded.spec, env)
    policy = policy_for(loaded.spec, strategy)
    _check_policy(policy, cfg)
    check_secrets(ctx, cfg)
    known = ctx.ledger.releases.with_image(cfg.app, image)
    if known is None:
        raise UsageError(f"no release of {cfg.app} recorded the image {image!r}.",
                         "Deploy an image a release used (`kiln releases` lists them), or bake with `kiln deploy`.")
    with locked(ctx, cfg.app, env, "deploy") as lease:
        with ports_named(ctx, cfg):
            ctx.router(cfg).check()
        if ctx.engine_for(cfg).image_id(known.image) is None:
            raise KilnError(f"the image {short_image(known.image)} is no longer on {env}'s engine or in its registry.",
                            f"Check out commit {(known.commit or '?')[:12]} and run `kiln deploy` to bake it again.")
        origin = "" if known.env == env else f"image of {known.env} v{known.number}"
        artifact = Artifact(known.image, known.image_tag, known.inputs_hash, known.commit, known.dirty, origin)
        return ship(ctx, lease, cfg, artifact, loaded.digest, policy)


def ship(ctx: Context, lease: Lease, cfg: EnvConfig, artifact: Artifact, spec_digest: str, policy: Policy) -> Outcome:
    """Put `artifact` with config `cfg` in service (the caller holds the lock, `lease`): the release in
    service when it is the same, a retry of the newest one when that never got in, else a new one.
    On a cluster engine the image is pushed first, and the release records `repository@sha256:…`."""
    published = ctx.engine_for(cfg).publish(artifact.image, cfg.repository)
    if published != artifact.image:
        ctx.out.step(f"Pushed {published}")
        artifact = replace(artifact, image=published)
    router = prepare(ctx, cfg)
    settle(ctx, lease, router)
    current = ctx.ledger.releases.current(cfg.app, cfg.env)
    config_digest = cfg.digest()
    newest = next(iter(ctx.ledger.releases.of(cfg.app, cfg.env, limit=1)), None)
    if current and current.image == artifact.image and current.config_digest == config_digest:
        release = current
    elif newest and newest.image == artifact.image and newest.config_digest == config_digest and not newest.note:
        release = newest  # a retry of a release that did not get into service
        ctx.out.step(f"Retrying release v{release.number} of {cfg.app}/{cfg.env}")
    else:
        release = ctx.ledger.releases.record(
            app=cfg.app, env=cfg.env, image=artifact.image, image_tag=artifact.tag, inputs_hash=artifact.inputs_hash,
            config=cfg.model_dump(mode="json"), config_digest=config_digest, spec_digest=spec_digest,
            commit=artifact.commit, dirty=artifact.dirty, origin=artifact.origin)
        origin = f" ({artifact.origin})" if artifact.origin else ""
        ctx.out.step(f"Recorded release v{release.number} of {cfg.app}/{cfg.env}{origin}")
    return roll_out(ctx, lease, router, release, current, policy)


def rollback(ctx: Context, spec: Spec, env: str, to: int | None, strategy: str | None = None) -> Outcome:
    app = spec.app
    # A rollback is urgent and goes onto a release that served: it rolls, unless told otherwise.
    policy = policy_for(spec, strategy or "rolling")
    with locked(ctx, app, env, "rollback") as lease:
        unfinished = ctx.ledger.rollouts.unfinished(app, env)
        if unfinished:
            settle(ctx, lease, ctx.router(_config_of(ctx, unfinished[-1])))
        current = ctx.ledger.releases.current(app, env)
        if current and any(r.state == PAUSED for r in unfinished):
            # Rolling back while a blue-green release waits for promotion means: drop that release.
            ctx.out.done(f"v{current.number} keeps serving")
            return Outcome(current, changed=True)
        if current is None:
            raise UsageError(f"{app}/{env} has no release in service, so there is nothing to roll back.")
        if to is None:
            # The release that served before the current one; aborted releases never served.
            states = ctx.ledger.releases.states(app, env)
            earlier = [n for n, state in states.items() if state == "served" and n < current.number]
            if not earlier:
                raise UsageError(f"{app}/{env} has no earlier release that served, so there is nothing to roll back to.")
            to = max(earlier)
        target = ctx.ledger.releases.require(app, env, to)
        if ctx.engine_for(target.env_config()).image_id(target.image) is None:
            raise KilnError(f"the image of v{to} ({short_image(target.image)}) is no longer on this engine or in its registry.",
                            "Check out its commit and run `kiln deploy` to bake it again.")
        if target.image == current.image and target.config_digest == current.config_digest:
            ctx.out.done(f"v{current.number} already runs the same image and config as v{to}")
            return Outcome(current, changed=False)
        router = prepare(ctx, target.env_config())
        release = ctx.ledger.releases.record(
            app=app, env=env, image=target.image, image_tag=target.image_tag, inputs_hash=target.inputs_hash,
            config=target.config, config_digest=target.config_digest, spec_digest=target.spec_digest,
            commit=target.commit, dirty=target.dirty, note=f"rollback to v{to}")
        ctx.out.step(f"Recorded release v{release.number} (rollback to v{to})")
        return roll_out(ctx, lease, router, release, current, policy)


def promote(ctx: Context, app: str, env: str) -> Outcome:
    """Switch traffic to the blue-green release waiting on the preview port."""
    with locked(ctx, app, env, "promote") as lease:
        paused = [r for r in ctx.ledger.rollouts.unfinished(app, env) if r.state == PAUSED]
        if not paused:
            raise UsageError(f"no release of {app}/{env} waits for promotion.",
                             "A blue-green rollout with `promote: manual` waits after its smoke checks.")
        rollout = paused[-1]
        ctx.ledger.rollouts.finish(rollout.id, kinds.RUNNING)
        progress = Progress.from_data(rollout.data)
        progress.index += 1  # past "promotion"
        return _continue(ctx, lease, ctx.router(_config_of(ctx, rollout)), rollout, progress)


def resume(ctx: Context, app: str, env: str) -> list[Rollout]:
    """`kiln rollout resume`: settle what a killed kiln left unfinished."""
    with locked(ctx, app, env, "resume") as lease:
        unfinished = [r for r in ctx.ledger.rollouts.unfinished(app, env) if r.state != PAUSED]
        if unfinished:
            settle(ctx, lease, ctx.router(_config_of(ctx, unfinished[-1])), drop_paused=False)
        return [r for r in (ctx.ledger.rollouts.get(u.id) for u in unfinished) if r]


def abort(ctx: Context, app: str, env: str, by: str) -> Rollout:
    """Abort app/env's unfinished rollout. One waiting for promotion is dropped at once, under the
    environment's lock; a running one belongs to the process running it (which holds the lock):
    it is asked, through the ledger, and aborts at its next phase or analysis tick, converging
    back to the release that served. Returns the rollout as it is now."""
    unfinished = ctx.ledger.rollouts.unfinished(app, env)
    if not unfinished:
        raise UsageError(f"no rollout of {app}/{env} is running or waiting for promotion.")
    last = unfinished[-1]
    if last.state == PAUSED:
        with locked(ctx, app, env, "abort") as lease:
            settle(ctx, lease, ctx.router(_config_of(ctx, last)))
    else:
        ctx.ledger.rollouts.request_abort(last.id, by)
        ctx.out.step(f"rollout {last.id} to v{last.to_release} was asked to abort; its kiln converges back")
    return ctx.ledger.rollouts.get(last.id) or last


@contextmanager
def locked(ctx: Context, app: str, env: str, reason: str) -> Iterator[Lease]:
    """Hold app/env's lock for the body, which gets its lease to hand to what changes the
    environment (the executor stops once the lease is lost)."""
    with hold(ctx.ledger, app, env, reason) as held:
        yield held.lease


def prepare(ctx: Context, cfg: EnvConfig) -> Router:
    """The environment's network and router, before any release is recorded for it."""
    router = ctx.router(cfg)
    ctx.engine_for(cfg).ensure_network(network_name(cfg.app, cfg.env), selector(cfg.app, cfg.env))
    with ports_named(ctx, cfg):
        started = router.ensure()
    if started:
        ctx.out.step(f"Router listening on {cfg.url}" + (f", preview on {cfg.preview_url}" if cfg.preview_url else ""))
    return router


@contextmanager
def ports_named(ctx: Context, cfg: EnvConfig) -> Iterator[None]:
    """A port another kiln environment holds is reported as that environment's, not a stranger's."""
    try:
        yield
    except PortInUse:
        wanted = {p for p in (cfg.port, cfg.preview_port) if p}
        for app, env in ctx.ledger.releases.everywhere():
            if (app, env) == (cfg.app, cfg.env):
                continue
            release = ctx.ledger.releases.current(app, env)
            other = release.env_config() if release else None
            taken = wanted & {p for p in (other.port, other.preview_port) if p} if other else set()
            if other and taken and url_host(other.bind) == url_host(cfg.bind):
                port = min(taken)
                raise PortInUse(f"port {port} on {cfg.bind} is used by kiln environment {app}/{env}.",
                                f"Choose another port for {cfg.app}/{cfg.env} in kiln.yaml, or remove that "
                                f"environment (`kiln destroy -e {env}` in {app}'s directory).") from None
        raise


def settle(ctx: Context, lease: Lease, router: Router, drop_paused: bool = True) -> None:
    """Finish or undo rollouts that a killed kiln left unfinished (the caller holds the lock,
    `lease`, so their kiln is gone). Past the traffic switch they are completed; before it, undone. A
    blue-green release waiting for promotion is dropped when a new change comes."""
    app, env = router.cfg.app, router.cfg.env
    engine = ctx.engine_for(router.cfg)
    # A hook container outlives only a killed kiln (run_once removes it otherwise): an orphan.
    for hook in engine.containers(selector(app, env, HOOK)):
        ctx.out.warn(f"removing {hook.name}, a hook container left by an interrupted rollout")
        engine.remove(hook.name)
    for rollout in ctx.ledger.rollouts.unfinished(app, env):
        if rollout.state == PAUSED and not drop_paused:
            continue
        progress = Progress.from_data(rollout.data) if rollout.data.get("phases") else None
        forward = progress is not None and rollout.state != PAUSED and resume_forward(progress.phases, progress.index)
        if forward and progress is not None:
            ctx.out.warn(f"rollout {rollout.id} to v{rollout.to_release} was interrupted in its "
                         f"{progress.phases[progress.index] if progress.index < len(progress.phases) else 'last'} phase; completing it")
            ctx.ledger.events.record(app, env, kinds.ROLLOUT_RESUMED, f"rollout {rollout.id} to v{rollout.to_release}")
            _continue(ctx, lease, router, rollout, progress)
        else:
            why = "dropped: a new change came before its promotion" if rollout.state == PAUSED else \
                "interrupted before its traffic switch; undone"
            ctx.out.warn(f"rollout {rollout.id} to v{rollout.to_release} was {why}")
            executor = _executor(ctx, lease, router, rollout)
            _abort(ctx, executor, _release(ctx, rollout.from_release, app, env), _release(ctx, rollout.to_release, app, env))
            ctx.ledger.rollouts.finish(rollout.id, kinds.ABORTED, why)
            ctx.ledger.events.record(app, env, kinds.ROLLOUT_ABORTED, f"rollout {rollout.id} to v{rollout.to_release}: {why}")


def roll_out(ctx: Context, lease: Lease, router: Router, release: Release, previous: Release | None,
             policy: Policy) -> Outcome:
    cfg = release.env_config()
    if previous and previous.number == release.number:
        probe_only = Executor(ctx.engine_for(cfg), router, ctx.ledger, ctx.out, ExecutorOptions(secrets=ctx.secret))
        if probe_only.converged(Target.of(release), kept(ctx, cfg.app, cfg.env)):
            ctx.out.done(f"Nothing to do: v{release.number} is serving as desired")
            return Outcome(release, changed=False)
    if previous is None and policy.strategy != "rolling":
        policy = policy.model_copy(update={"strategy": "rolling"})  # nothing serves yet: nothing to shield
    progress = Progress(phases(policy, policy.before_traffic is not None, policy.after_traffic is not None), 0, policy)
    rollout = ctx.ledger.rollouts.start(cfg.app, cfg.env, previous.number if previous else None,
                                       release.number, policy.strategy, progress.data())
    ctx.ledger.events.record(cfg.app, cfg.env, kinds.ROLLOUT_STARTED,
                     f"rollout {rollout.id} to v{release.number} ({policy.strategy})")
    ctx.out.step(f"Rolling out v{release.number} ({policy.strategy}: {', '.join(map(str, progress.phases))})")
    outcome = _continue(ctx, lease, router, rollout, progress)
    return Outcome(outcome.release, changed=previous is None or previous.number != release.number, state=outcome.state)


def _continue(ctx: Context, lease: Lease, router: Router, rollout: Rollout, progress: Progress) -> Outcome:
    """Run `rollout` from progress.index to its end; abort it (converging back) when it fails."""
    app, env = router.cfg.app, router.cfg.env
    release = ctx.ledger.releases.require(app, env, rollout.to_release)
    previous = _release(ctx, rollout.from_release, app, env) if rollout.from_release else None
    executor = _executor(ctx, lease, router, rollout)
    driver = Driver(ctx.engine_for(router.cfg), router, ctx.ledger, ctx.out, rollout.id, Target.of(release), executor)
    try:
        state = driver.run(progress)
    except LockLost:
        raise  # someone else owns the environment now; touching it more would race them
    except (KilnError, KeyboardInterrupt) as exc:
        reason = exc.message if isinstance(exc, KilnError) else "interrupted"
        ctx.out.warn(f"Aborting the rollout to v{release.number}: {reason}")
        _abort(ctx, executor, previous, release)
        ctx.ledger.rollouts.finish(rollout.id, kinds.ABORTED, reason)
        ctx.ledger.events.record(app, env, kinds.ROLLOUT_ABORTED, f"rollout {rollout.id} to v{release.number}: {reason}")
        if isinstance(exc, KeyboardInterrupt):
            raise
        kept_msg = f"v{previous.number} keeps serving" if previous else "nothing was serving before"
        raise RolloutError(f"the rollout to v{release.number} was aborted: {reason}", f"{kept_msg}.") from None
    match state:
        case RolloutState.PAUSED:
            ctx.ledger.rollouts.finish(rollout.id, state)
            ctx.ledger.events.record(app, env, kinds.ROLLOUT_PAUSED,
                                     f"rollout {rollout.id}: v{release.number} waits for promotion")
            return Outcome(release, changed=True, state=state)
        case RolloutState.SUCCEEDED:
            ctx.ledger.rollouts.finish(rollout.id, state)
            ctx.ledger.events.record(app, env, kinds.ROLLOUT_SUCCEEDED, f"rollout {rollout.id}: v{release.number} serving")
            return Outcome(release, changed=True)
        case _:
            assert_never(state)


def kept(ctx: Context, app: str, env: str) -> frozenset[str]:
    """Instances a blue-green rollout keeps idle for a fast rollback, while their time lasts."""
    last = next((r for r in ctx.ledger.rollouts.of(app, env, limit=5) if r.state == kinds.SUCCEEDED), None)
    if last is None or not last.data.get("kept"):
        return frozenset()
    if datetime.now(UTC).timestamp() > float(last.data.get("keep_until", 0)):
        return frozenset()
    return frozenset(last.data["kept"])


def _executor(ctx: Context, lease: Lease, router: Router, rollout: Rollout) -> Executor:
    """The executor of `rollout`: it journals into its steps and knows its from and to releases."""
    app, env = router.cfg.app, router.cfg.env
    known = tuple(Target.of(r) for r in (_release(ctx, n, app, env) for n in (rollout.from_release, rollout.to_release))
                  if r is not None)
    return Executor(ctx.engine_for(router.cfg), router, ctx.ledger, ctx.out,
                    ExecutorOptions(rollout_id=rollout.id, known=known, lease=lease, secrets=ctx.secret))


def _release(ctx: Context, number: int | None, app: str, env: str) -> Release | None:
    return ctx.ledger.releases.get(app, env, number) if number else None


def _config_of(ctx: Context, rollout: Rollout) -> EnvConfig:
    release = _release(ctx, rollout.to_release, rollout.app, rollout.env)
    if release is None:
        raise LedgerError(f"rollout {rollout.id} of {rollout.app}/{rollout.env} goes to v{rollout.to_release}, "
                          "which the ledger does not have.")
    return release.env_config()


def _abort(ctx: Context, executor: Executor, previous: Release | None, failed: Release | None) -> None:
    if previous is not None:
        executor.converge(Target.of(previous), strict=False)
    elif failed is not None:  # a first deploy: back to nothing
        empty = Target.of(failed)
        cfg = empty.cfg.model_copy(update={"services": tuple(s.model_copy(update={"replicas": 0})
                                                             for s in empty.cfg.services)})
        executor.converge(Target(failed, cfg), strict=False)


def check_secrets(ctx: Context, cfg: EnvConfig) -> None:
    """Every `secret:NAME` the release refers to can be looked up, before anything changes."""
    secretref.check({s.name: s.environment for s in cfg.services}, ctx.secret)


def _check_policy(policy: Policy, cfg: EnvConfig) -> None:
    if policy.strategy == "blue-green" and not cfg.preview_port:
        raise UsageError(f"blue-green needs a preview port for {cfg.app}/{cfg.env}: the new set answers there "
                         "before it gets public traffic.",
                         f"Set environments.{cfg.env}.preview_port in kiln.yaml (e.g. {cfg.port + 1000}).")
