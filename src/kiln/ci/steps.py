"""What each kind of pipeline step does. A step returns a one-line result, or raises a KilnError
(the step failed) or Cancelled; the runner records either. Side effects: the engine (run steps
and their sidecars), the use cases (deploy, promote) and HTTP (smoke checks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import assert_never
from urllib.parse import urlsplit

from kiln import probe, secretref
from kiln.bake.baker import BakedImage
from kiln.bake.base import ensure_base
from kiln.bake.vm import is_vm_ref
from kiln.ci.logsink import StepLog
from kiln.ci.plan import check_problem, command_argv
from kiln.context import Context
from kiln.errors import PipelineError
from kiln.ledger.ci_store import CiRun, CiStore
from kiln.ledger.kinds import PAUSED, RunState, StepState
from kiln.providers.base import (
    CI,
    SIDECAR_LIMITS,
    STEP_LIMITS,
    ContainerSpec,
    Engine,
    selector,
    short_image,
)
from kiln.spec.loader import LoadedSpec
from kiln.spec.models import Base
from kiln.spec.pipeline import Sidecar, Step, StepKind
from kiln.spec.smoke import Check

POLL = 0.5


class Cancelled(Exception):
    """`kiln ci cancel` asked this run to stop."""


@dataclass
class StepContext:
    ctx: Context  # its output writes into the step's log
    store: CiStore
    run: CiRun
    step_id: int
    position: int
    loaded: LoadedSpec  # the spec of the checked-out commit
    image: BakedImage  # what this run baked
    log: StepLog
    secret: Callable[[str], str | None]  # a secret's value by name
    cancelled: threading.Event

    def labels(self) -> dict[str, str]:
        return {**selector(self.loaded.spec.app, role=CI), "kiln.ci.run": str(self.run.id)}


def execute(sc: StepContext, step: Step) -> str:
    kind = step.kind
    match kind:
        case StepKind.RUN:
            return run_command(sc, step)
        case StepKind.DEPLOY:
            return deploy(sc, step.deploy or "")
        case StepKind.PROMOTE:
            return promote(sc, step)
        case StepKind.SMOKE:
            return smoke(sc, step.smoke or "", step.checks)
        case StepKind.BAKE | StepKind.PARALLEL:
            raise PipelineError(f"a {kind} step cannot run on its own")
        case _:
            assert_never(kind)


# --- run: a command in a throwaway container of the baked image --------------------------------


def run_command(sc: StepContext, step: Step) -> str:
    engine = sc.ctx.engine()  # where the run baked its image
    prefix = f"kiln-ci-{sc.run.id}-{sc.position}"
    network = prefix  # "kiln-…": the provider reports addresses on kiln networks
    env = {**secretref.resolve(step.environment, sc.secret, "environment"), "CI": "true", "KILN_CI": "1",
           "KILN_CI_RUN": str(sc.run.id), "KILN_CI_REF": sc.run.ref, "KILN_CI_COMMIT": sc.run.commit}
    engine.ensure_network(network, sc.labels())
    started: list[str] = []
    try:
        for name, sidecar in step.services.items():
            started.append(f"{prefix}-{name}")
            _start_sidecar(sc, engine, network, f"{prefix}-{name}", name, sidecar)
        name = f"{prefix}-step"
        started.append(name)
        # Hardened as instances are (the provider drops every capability and adds an init).
        spec = ContainerSpec(name=name, image=sc.image.id, network=network, labels=sc.labels(),
                             command=command_argv(step.run or ()), environment=env, hardening=step.hardening,
                             limits=STEP_LIMITS)
        finished = engine.run_streamed(spec, sc.log.write, step.timeout, sc.cancelled.is_set)
    finally:
        for name in reversed(started):
            engine.remove(name)
        engine.remove_network(network)
    if finished.stopped == "cancelled":
        raise Cancelled()
    if finished.stopped == "timeout":
        raise PipelineError(f"did not finish within its timeout of {step.timeout:g}s; stopped")
    if finished.code != 0:
        last = "; ".join(line for line in sc.log.tail[-3:] if line.strip())
        raise PipelineError(f"exited with code {finished.code}" + (f": {last}" if last else ""))
    return "exit code 0"


def _start_sidecar(sc: StepContext, engine: Engine, network: str, name: str, alias: str, sidecar: Sidecar) -> None:
    image = sc.image.id
    if sidecar.packages:
        image = ensure_base(engine, Base(packages=sidecar.packages), sc.ctx.out, sc.ctx.settings.home / "tmp").id
    env = secretref.resolve(sidecar.environment, sc.secret, f"services.{alias}.environment")
    sc.log.write(f"› starting service {alias} ({image[:19]})")
    engine.start(ContainerSpec(name=name, image=image, network=network, labels=sc.labels(), aliases=(alias,),
                               command=command_argv(sidecar.command) if sidecar.command else None,
                               environment=env, hardening=sidecar.hardening, limits=SIDECAR_LIMITS))
    if sidecar.port is None:
        return
    deadline = time.monotonic() + sidecar.ready_timeout
    while time.monotonic() < deadline:
        _check_cancel(sc)
        facts = engine.container(name)
        if facts is None or facts.state == "exited":
            raise PipelineError(f"service {alias} exited before it opened port {sidecar.port}: "
                                f"{engine.logs(name, tail=5)}")
        if facts.ip and probe.tcp_ok(facts.ip, sidecar.port, 1.0):
            sc.log.write(f"✓ service {alias} accepts connections on port {sidecar.port}")
            return
        time.sleep(0.2)
    raise PipelineError(f"service {alias} did not open port {sidecar.port} within {sidecar.ready_timeout:g}s.")


# --- deploy, promote ---------------------------------------------------------------------------


def deploy(sc: StepContext, env: str) -> str:
    from kiln.usecases.deploy import deploy as do_deploy

    outcome = do_deploy(sc.ctx, sc.loaded, env)
    got = outcome.release.image  # on a cluster engine, the tested image as pushed: repository@sha256:…
    engine = sc.ctx.engine_for(outcome.release.env_config())
    if is_vm_ref(got):  # a VM image: the tested files on the VM base, baked from the same commit
        if outcome.release.commit != sc.image.commit:
            raise PipelineError(f"{env} got VM image {short_image(got)} of commit {outcome.release.commit}, "
                                f"not of the tested {sc.image.commit}.")
    elif got != sc.image.id and engine.image_id(got) != sc.image.id:  # the same inputs must give the tested image
        raise PipelineError(f"{env} got image {short_image(got)}, not the tested {sc.image.id[:19]}.")
    what = "already serving" if not outcome.changed else "waits for `kiln promote`" if outcome.state == PAUSED \
        else "serving"
    return f"{env} v{outcome.release.number} {what} ({sc.image.id[:19]})"


def promote(sc: StepContext, step: Step) -> str:
    target = step.promote
    if target is None:
        raise PipelineError("a promote step names no environments")
    if target.approval == "manual":
        wait_for_approval(sc, f"promote {target.source} → {target.to}")
    from kiln.usecases.environments import promote_artifact

    outcome = promote_artifact(sc.ctx, sc.loaded, target.source, target.to)
    return f"{target.to} v{outcome.release.number} serving {short_image(outcome.release.image)} (from {target.source})"


def wait_for_approval(sc: StepContext, what: str) -> None:
    """Wait until `kiln ci approve RUN` marks this step approved (or the run is cancelled)."""
    sc.store.set_step(sc.step_id, StepState.WAITING, "waits for `kiln ci approve`")
    sc.store.set_state(sc.run.id, RunState.WAITING, f"{what} waits for `kiln ci approve {sc.run.id}`")
    sc.log.write(f"… {what} waits for approval: kiln ci approve {sc.run.id}")
    sc.log.flush()
    while True:
        _check_cancel(sc)
        row = sc.store.step(sc.step_id)
        if row is not None and row.state == StepState.APPROVED:
            break
        time.sleep(POLL)
    sc.log.write(f"✓ approved: {row.detail}")
    sc.store.set_state(sc.run.id, RunState.RUNNING, only_from=(RunState.WAITING,))
    sc.store.set_step(sc.step_id, StepState.RUNNING)


def _check_cancel(sc: StepContext) -> None:
    if sc.cancelled.is_set():
        raise Cancelled()


# --- smoke: HTTP checks against an environment's public URL ------------------------------------


def smoke(sc: StepContext, env: str, checks: tuple[Check, ...]) -> str:
    """GET each check's path on `env`'s URL as its serving release recorded it, never as this
    commit's kiln.yaml says: a pushed spec cannot point a smoke step at another address (a
    release's bind and port passed the trust check when it was deployed, or came from an
    operator). The verdict never quotes the answer's body (spec/smoke.check_problem)."""
    app = sc.loaded.spec.app
    release = sc.ctx.ledger.releases.current(app, env)
    if release is None:
        raise PipelineError(f"nothing serves {app}/{env} yet, so there is nothing to smoke-check.",
                            f"Deploy {env} in an earlier step (a smoke step checks the URL its release recorded).")
    url = release.env_config().url
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    for check in checks:
        deadline = time.monotonic() + check.within
        while True:
            _check_cancel(sc)
            try:
                status, body = probe.http_get(host, port, check.path, min(5.0, max(check.within, 1.0)))
                problem = check_problem(check, status, body)
            except (OSError, HTTPException) as exc:  # no answer: refused, reset, timed out, bad HTTP
                problem = check_problem(check, None, "", type(exc).__name__)
            if problem is None:
                sc.log.write(f"✓ GET {url}{check.path}: {check.status}")
                break
            if time.monotonic() >= deadline:
                raise PipelineError(f"GET {url}{check.path}: {problem}")
            sc.log.write(f"  GET {url}{check.path}: {problem}; retrying")
            time.sleep(POLL)
    return f"{len(checks)} check{'s' if len(checks) != 1 else ''} passed on {url}"

