"""Runs plans: observe facts, plan, run the first step, repeat until the plan is empty.

The only rollout code with side effects. Every action is written to a journal before it
starts and again when it ends: a rollout's steps in the ledger (so it can be read back and
resumed), or, for the agent, the environment's events.

An executor is given everything it works with as one `ExecutorOptions` value when it is made
(the releases it may meet, the instances judged failed or tainted, the lease of the lock it works
under, its journal, hooks and probe); nothing is set on it afterwards. What it keeps of its own is
what it did: the goal converge() works toward, the releases it met, the instances it started."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kiln import faults
from kiln.errors import RolloutError, UsageError
from kiln.ledger import kinds
from kiln.ledger.releases import Release
from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.providers.base import ContainerFacts, Engine, Role, selector
from kiln.rollout.instances import instance_spec, new_instance_name
from kiln.rollout.lock import Lease
from kiln.rollout.plan import (
    Action,
    AwaitHealthy,
    Desired,
    Instance,
    Remove,
    Route,
    Start,
    Task,
    Unroute,
    plan,
)
from kiln.router.base import Traffic
from kiln.router.config import CONNECT_TIMEOUT
from kiln.secretref import reference
from kiln.secretstore import masker_for
from kiln.spec.resolve import EnvConfig, ServiceConfig


@dataclass(frozen=True)
class Target:
    """A release the executor may start instances of."""

    release: Release
    cfg: EnvConfig

    @classmethod
    def of(cls, release: Release) -> Target:
        return cls(release, release.env_config())

    def same_as(self, c: ContainerFacts) -> bool:
        """An instance of any release with this release's exact image and resolved config."""
        return c.image == self.release.image and c.label("config") == self.release.config_digest

    def desired(self, **shape: object) -> Desired:
        """The desired state; `shape` sets surge, unavailable, weight, preview, hold, keep."""
        svc = self.cfg.public_service
        return Desired(self.release.number, {s.name: s.replicas for s in self.cfg.services},
                       svc.name if svc else None, **shape)  # type: ignore[arg-type]


# (action, instance, state, detail): action is one of kinds.STEP_*
Journal = Callable[[str, str, kinds.ActionState, str], None]

def events_journal(ledger: Ledger, app: str, env: str) -> Journal:
    """The journal of work outside a rollout (the agent's healing, a node drain): each action's
    end as an event of the environment."""
    def journal(action: str, target: str, state: kinds.ActionState, detail: str) -> None:
        if state != kinds.ActionState.STARTED:
            ledger.events.record(app, env, kinds.AGENT_ACTION_EVENTS[action],
                                 f"{target}: {state}" + (f" ({detail})" if detail else ""))
    return journal


# The name journalled for each action: stored data, so an explicit constant, never the class name.
STEP_OF: dict[type, str] = {
    Start: kinds.STEP_START,
    AwaitHealthy: kinds.STEP_AWAIT_HEALTHY,
    Route: kinds.STEP_ROUTE,
    Unroute: kinds.STEP_UNROUTE,
    Remove: kinds.STEP_REMOVE,
}


@dataclass(frozen=True)
class ExecutorOptions:
    """What an executor works with, given whole when it is made."""

    rollout_id: int = 0  # the rollout whose steps journal the actions (unless `journal` says otherwise)
    known: tuple[Target, ...] = ()  # releases whose instances it may meet: a rollout's from and to
    goal: Target | None = None  # counted as current by observe() until converge() is given a goal
    failed: frozenset[str] = frozenset()  # running but judged failed (unhealthy): retired like dead ones
    tainted: frozenset[str] = frozenset()  # drifted from their release: replaced, then retired
    lease: Lease | None = None  # of the lock it works under: once lost, it stops before its next step
    journal: Journal | None = None  # default: the rollout's steps in the ledger
    watch: Callable[[list[Instance]], None] | None = None  # sees every observation of converge(); may raise to stop it
    probe: Callable[[ServiceConfig, ContainerFacts], bool] | None = None  # default: the engine's probe
    secrets: Callable[[str], str | None] | None = None  # secret name -> value, to mask output kept in reasons


class Executor:
    def __init__(self, runtime: Engine, router: Traffic, ledger: Ledger, out: Output,
                 options: ExecutorOptions = ExecutorOptions()) -> None:
        self.runtime, self.router, self.ledger, self.out = runtime, router, ledger, out
        self.options = options
        self.rollout_id = options.rollout_id
        self.secrets = options.secrets
        self.probe = options.probe or (lambda svc, c: runtime.probe(c, svc.healthcheck, svc.port))
        rollout_id = options.rollout_id
        self.journal: Journal = options.journal or (lambda *entry: ledger.rollouts.record_step(rollout_id, *entry))
        self._targets: dict[int, Target] = {t.release.number: t for t in options.known}  # and those converged to
        self.started: set[str] = set()  # instances this executor created
        self._goal: Target | None = options.goal  # what converge() is working toward
        cfg = router.cfg
        self.selector = selector(cfg.app, cfg.env, Role.INSTANCE)
        self.routed = cfg.public_service.name if cfg.public_service else None

    @property
    def failed(self) -> frozenset[str]:
        return self.options.failed

    @property
    def tainted(self) -> frozenset[str]:
        return self.options.tainted

    # --- observe ------------------------------------------------------------------------

    def containers(self) -> list[ContainerFacts]:
        return self.runtime.containers(self.selector)

    def observe(self) -> list[Instance]:
        servers = self.router.servers()
        preview = self.router.servers(preview=True)
        facts = []
        containers = self.containers()
        for c in containers:
            service, release = c.label("service") or "?", int(c.label("release") or 0)
            if self._goal and self._goal.same_as(c):
                release = self._goal.release.number  # a rollback onto instances that still run
            server = servers.get(c.name)
            if service == self.routed:
                ready = server is not None and server.serving
            else:
                ready = c.running and self._healthy_now(c)
            facts.append(Instance(c.name, service, release, c.running and c.name not in self.failed, ready,
                                  in_router=server is not None, weight=server.weight if server else None,
                                  in_preview=c.name in preview, tainted=c.name in self.tainted))
        # A router entry whose container is gone points at nothing: it is retired like a dead instance.
        known = {c.name for c in containers}
        for name in (servers.keys() | preview.keys()) - known:
            facts.append(Instance(name, self.routed or "?", -1, running=False, ready=False, in_router=True))
        return facts

    # --- converge -----------------------------------------------------------------------

    def converged(self, target: Target, keep: frozenset[str] = frozenset()) -> bool:
        return not plan(target.desired(keep=keep), self.observe())

    def converge(self, target: Target, desired: Desired | None = None, strict: bool = True) -> None:
        """Bring the environment to `target` (shaped by `desired`, if given). With `strict`, an
        instance this rollout started that dies aborts it; instances that died before (say, in an
        engine restart) are replaced."""
        self._targets[target.release.number] = target
        self._goal = target
        desired = desired or target.desired()
        budget = 4 * (sum(desired.replicas.values()) + len(self.containers())) + 8
        for _ in range(budget):
            if self.options.lease is not None:
                self.options.lease.check()
            facts = self.observe()
            if self.options.watch is not None:
                self.options.watch(facts)
            if strict:
                for i in facts:
                    if i.name in self.started and not i.running:
                        raise RolloutError(f"instance {i.name} exited.{self._log_hint(i.name)}")
            steps = plan(desired, facts)
            if not steps:
                return
            self._run_step(steps[0])
        raise RolloutError(f"the environment did not converge to v{desired.release} after {budget} steps.")

    def _run_step(self, step: list[Task]) -> None:
        if len(step) == 1:
            self._run_task(step[0])
            return
        with ThreadPoolExecutor(max_workers=min(8, len(step))) as pool:
            results = [pool.submit(self._run_task, task) for task in step]
        errors = [f.exception() for f in results if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]

    def _run_task(self, task: Task) -> None:
        for action in task:
            self._run_action(action)

    def _run_action(self, action: Action) -> None:
        if isinstance(action, Start):
            self._start(action)
            return
        kind, target = STEP_OF[type(action)], action.name
        self.journal(kind, target, kinds.ActionState.STARTED, "")
        try:
            detail = self._do(action)
        except Exception as exc:
            self.journal(kind, target, kinds.ActionState.FAILED, str(exc))
            raise
        self.journal(kind, target, kinds.ActionState.DONE, detail)

    def _start(self, action: Start) -> None:
        t = self._targets[action.release]
        svc = t.cfg.service(action.service)
        name = new_instance_name(t.cfg, svc.name, action.release)
        # Recorded before it exists, so an interrupted rollout knows what it may have made.
        self.journal(STEP_OF[Start], name, kinds.ActionState.STARTED, "")
        self.started.add(name)
        self.runtime.start(instance_spec(t.cfg, svc, action.release, t.release.image, name))
        self.journal(STEP_OF[Start], name, kinds.ActionState.DONE, "")
        self.out.step(f"started {name}")
        faults.point("started")

    def _do(self, action: Action) -> str:
        if isinstance(action, AwaitHealthy):
            took = self._await_healthy(action.name)
            return f"healthy after {took:.2f}s"
        if isinstance(action, Route):
            facts, svc = self._instance(action.name)
            if not facts.ip or svc.port is None or svc.healthcheck is None:
                raise RolloutError(f"{action.name} cannot be routed: it has no address, port or health check.")
            server = self.router.servers().get(action.name)
            if server is not None and server.status.startswith("MAINT"):
                # Added by a kiln killed before it enabled the server: add it again, whole.
                self.router.drain_and_remove(action.name, 0.0)
                server = None
            if server is None:
                self.router.add(action.name, facts.ip, svc.port, svc.healthcheck.interval, action.weight)
            elif server.weight != action.weight:
                self.router.set_weights({action.name: action.weight})
            if action.preview and action.name not in self.router.servers(preview=True):
                self.router.add(action.name, facts.ip, svc.port, svc.healthcheck.interval, preview=True)
            took = self._await_routed(action.name, svc)
            self.out.step(f"{action.name} {'receives traffic' if action.weight else 'is in the router, idle'}")
            faults.point("routed")
            return f"up in the router at weight {action.weight} after {took:.2f}s"
        if isinstance(action, Unroute):
            # Requests routed to a dead instance can only be stuck connecting to it; they give up
            # within the connect timeout and go elsewhere. Cutting them sooner would fail them.
            c = self.runtime.container(action.name)
            alive = c is not None and c.running
            drain = self._instance(action.name)[1].drain_timeout if alive else CONNECT_TIMEOUT + 0.5
            waited = self.router.drain_and_remove(action.name, drain, dead=not alive)
            self.out.step(f"{action.name} drained ({waited:.2f}s)")
            return f"drained in {waited:.2f}s"
        if isinstance(action, Remove):
            grace = self._grace(action.name)
            self.runtime.stop(action.name, grace)
            self.runtime.remove(action.name)
            self.out.step(f"removed {action.name}")
            return ""
        raise AssertionError(action)

    # --- helpers ------------------------------------------------------------------------

    def _instance(self, name: str) -> tuple[ContainerFacts, ServiceConfig]:
        facts = self.runtime.container(name)
        if facts is None:
            raise RolloutError(f"instance {name} disappeared during the rollout.")
        release = int(facts.label("release") or 0)
        target = self._targets.get(release)
        cfg = target.cfg if target else self.router.cfg
        return facts, cfg.service(facts.label("service") or "")

    def _grace(self, name: str) -> float:
        try:
            return self._instance(name)[1].stop_grace_period
        except (RolloutError, UsageError):
            return 10.0

    def _healthy_now(self, c: ContainerFacts) -> bool:
        svc = self.router.cfg.find(c.label("service") or "")
        return svc is not None and self.probe(svc, c)

    def _await_healthy(self, name: str) -> float:
        facts, svc = self._instance(name)
        hc = svc.healthcheck
        start = time.monotonic()
        deadline = start + (hc.deadline if hc else 0)
        while True:
            facts = self.runtime.container(name) or facts
            if not facts.running:
                code = f" with code {facts.exit_code}" if facts.exit_code is not None else ""
                raise RolloutError(f"new instance {name} exited{code} before it became healthy.{self._log_hint(name)}")
            if self.probe(svc, facts):
                return time.monotonic() - start
            if time.monotonic() > deadline:
                what = _describe(svc)
                raise RolloutError(f"new instance {name} did not pass its healthcheck ({what}) within "
                                   f"{hc.deadline if hc else 0:g}s.{self._log_hint(name)}")
            # Polled faster than the service's interval: a new instance is often ready within
            # 100-200 ms, and each poll is one small request to it alone.
            time.sleep(min(hc.interval if hc else 0.5, 0.05))

    def _await_routed(self, name: str, svc: ServiceConfig) -> float:
        """Until the router's own check has passed: only then does the instance take traffic."""
        start = time.monotonic()
        limit = svc.healthcheck.deadline if svc.healthcheck else 30.0
        while True:
            server = self.router.servers().get(name)
            if server and server.serving:
                return time.monotonic() - start
            if time.monotonic() - start > limit:
                status = server.status if server else "missing"
                raise RolloutError(f"the router's check of {name} did not pass within {limit:g}s (status {status}).")
            time.sleep(0.05)

    def _log_hint(self, name: str) -> str:
        logs = self.mask(self.runtime.logs(name, tail=5))
        return f" Its last output:\n{logs}" if logs else ""

    def mask(self, text: str) -> str:
        """`text` (an instance's or a hook's output, about to become part of a rollout's reason,
        an event, a step's detail or a message) with the value of every `secret:NAME` reference of
        the releases in play masked (secretstore.Masker)."""
        if not text or self.secrets is None:
            return text
        cfgs = [t.cfg for t in self._targets.values()] + [self.router.cfg]
        names = {n for cfg in cfgs for svc in cfg.services for v in svc.environment.values() if (n := reference(v))}
        return masker_for(names, self.secrets)(text)


def _describe(svc: ServiceConfig) -> str:
    hc = svc.healthcheck
    if hc is None:
        return "running"
    if hc.kind == "http":
        return f"HTTP GET {hc.http} on port {svc.port}"
    if hc.kind == "tcp":
        return f"TCP connect to port {svc.port}"
    return "command " + " ".join(hc.command or ())
