"""One reconcile pass over one environment: keep it exactly at its current release.

Under the environment's lock (a deploy in progress means: skip, the rollout is in charge), a
pass finishes any rollout a killed kiln left behind, restarts a missing router, observes the
instances, judges which failed (agent/guard) and which drifted (agent/drift), records what it
found, and unless the meltdown guard halts it, converges with the rollouts' own executor: dead
and unhealthy instances are retired while their replacements start; tainted ones are retired
once their replacements serve."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import timedelta

from kiln.agent.guard import Health, halted, judge, limit
from kiln.context import Context
from kiln.errors import FactsChanged, KilnError, LockHeld
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.ledger.kinds import PAUSED
from kiln.ledger.releases import Release
from kiln.providers.base import ContainerFacts, EngineEvent
from kiln.rollout.executor import Executor, ExecutorOptions, Target, events_journal
from kiln.rollout.lock import AGENT, Held, hold
from kiln.rollout.plan import Desired, Instance, plan
from kiln.spec.models import AgentPolicy
from kiln.spec.resolve import EnvConfig
from kiln.usecases.deploy import kept, prepare, settle
from kiln.usecases.drift import inspect, recent_execs

DEATHS = ("die", "oom", "destroy")  # engine events that call for a pass at once
WATCHED = DEATHS + ("exec_start", "health_status")


@dataclass
class Memory:
    """What the agent remembers about one environment between passes."""

    suspects: frozenset[str] = frozenset()  # failed a health check once
    counted: set[str] = field(default_factory=set)  # failures already recorded
    reported: set[str] = field(default_factory=set)  # "NAME: reason" taints already recorded
    exempt: set[str] = field(default_factory=set)  # dead when first seen after (re)connecting: not counted
    fresh: bool = True  # the next pass is the first since the agent started or the engine came back
    execs: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    deaths: dict[str, tuple[str, float]] = field(default_factory=dict)  # instance -> (how, when), from events
    halted: bool | None = None


class Reconciler:
    def __init__(self, ctx: Context, app: str, env: str, policy: AgentPolicy) -> None:
        self.ctx, self.app, self.env, self.policy = ctx, app, env, policy
        self.memory = Memory()
        self.again = False  # the last pass stopped early: the next one should come at once

    # --- what the engine tells between passes --------------------------------------------

    def note(self, ev: EngineEvent) -> bool:
        """Remember an engine event; True when it calls for a pass now."""
        if ev.action == "exec_start":
            self.memory.execs.setdefault(ev.name, []).append((ev.detail, ev.at))
        elif ev.action == "oom":
            self.memory.deaths[ev.name] = ("OOM-killed", ev.at)
        elif ev.action in ("die", "destroy") and ev.name not in self.memory.deaths:
            code = ev.labels.get("exitCode")
            self.memory.deaths[ev.name] = (f"exited with code {code}" if code else "removed", ev.at)
        return ev.action in DEATHS or ev.action == "exec_start" or ev.detail == "unhealthy"

    def engine_restarted(self) -> None:
        """Instances that died with the engine are restored, not counted as failures."""
        self.memory.fresh = True

    # --- a pass ----------------------------------------------------------------------------

    def run(self) -> str:
        """One pass; returns what it did, or "" when the environment was as it should be."""
        ctx = self.ctx
        self.again = False
        release = ctx.ledger.releases.current(self.app, self.env)
        if release is None:
            return ""
        try:
            with hold(ctx.ledger, self.app, self.env, AGENT) as held:
                return self._pass(release, held)
        except LockHeld as exc:
            return "" if exc.lock.reason == AGENT else f"left alone: {exc.lock.holder} is changing it ({exc.lock.reason})"

    def _pass(self, release: Release, held: Held) -> str:
        ctx, app, env, mem = self.ctx, self.app, self.env, self.memory
        started = time.monotonic()
        cfg = release.env_config()
        router = ctx.router(cfg)
        engine = ctx.engine_for(cfg)
        said = []
        facts = router.facts()
        if facts is None or not facts.running:
            prepare(ctx, cfg)
            self._event(kinds.AGENT_ROUTER, f"router {router.name} was {facts.state if facts else 'missing'}; restarted it")
            said.append("restarted the router")
        if any(r.state != PAUSED for r in ctx.ledger.rollouts.unfinished(app, env)):
            settle(ctx, held.lease, router, drop_paused=False)
            return "settled a rollout a killed kiln left unfinished"
        if mem.fresh:
            mem.execs = {**recent_execs(engine, app, env), **mem.execs}

        target = Target.of(release)
        # Instances of an equal release (a rollback onto them) count as current: the goal from the start.
        options = ExecutorOptions(known=(target,), goal=target, lease=held.lease,
                                  journal=events_journal(ctx.ledger, app, env), secrets=ctx.secret)
        looking = Executor(engine, router, ctx.ledger, ctx.out, options)  # observes only, before any judgement
        listed = looking.containers()
        keep = kept(ctx, app, env) | self._paused_instances(listed)
        containers = {c.name: c for c in listed if c.name not in keep}
        facts_now = [i for i in looking.observe() if i.name not in keep]

        health = judge(facts_now, cfg.public_service.name if cfg.public_service else None, mem.suspects)
        # A suspect (failing its check for the first time) is judged on the next pass; until then
        # it counts as ready, so that this pass neither waits for its health nor replaces it.
        doubted = health.suspects
        self._record_failures(health)
        tainted = inspect(ctx, engine, app, env, [c for n, c in containers.items() if n not in health.failed], mem.execs)
        self._record_taints(tainted)
        self._forget(set(containers) | {i.name for i in facts_now})
        if self._halted(cfg):
            return ""  # said once, when the guard tripped; `kiln status` keeps saying it

        # The judgement goes into the executor that acts on it; its watch stops it at a failure
        # it was not told of (it reads the executor's own started instances as it goes).
        executor: Executor = Executor(engine, router, ctx.ledger, ctx.out, replace(
            options, failed=frozenset(health.failed),
            tainted=frozenset(tainted) if self.policy.drift == "replace" else frozenset(),
            probe=lambda svc, c: c.name in doubted or engine.probe(c, svc.healthcheck, svc.port),
            watch=lambda seen: self._unchanged(executor, seen)))
        desired = target.desired(keep=keep)
        # Planned from the facts judged above: an instance that died since is left to the next pass.
        marked = [replace(i, running=i.running and i.name not in executor.failed, tainted=i.name in executor.tainted,
                          ready=i.ready or i.name in doubted)
                  for i in facts_now]
        if not plan(desired, marked):
            return "; ".join(said)
        return "; ".join(said + [self._heal(executor, target, desired, started, held.lock.holder)])

    def _record_failures(self, health: Health) -> None:
        mem = self.memory
        mem.suspects = health.suspects
        if mem.fresh:
            mem.exempt = set(health.dead)
            mem.fresh = False
        for name, why in sorted(health.failed.items()):
            if name in mem.counted:
                continue
            mem.counted.add(name)
            how = mem.deaths.get(name, (why, 0.0))[0]
            if name in mem.exempt:
                self._event(kinds.INSTANCE_LOST, f"{name}: {how} while the engine or the agent was down; restoring")
            else:
                self._event(kinds.INSTANCE_FAILED, f"{name}: {how}")
                self.ctx.out.warn(f"{self.app}/{self.env}: {name} failed: {how}")

    def _record_taints(self, tainted: dict[str, list[str]]) -> None:
        for name, reasons in sorted(tainted.items()):
            fresh = [r for r in reasons if f"{name}: {r}" not in self.memory.reported]
            if fresh:
                self.memory.reported |= {f"{name}: {r}" for r in fresh}
                self._event(kinds.INSTANCE_TAINTED, f"{name}: {'; '.join(fresh)}")
                self.ctx.out.warn(f"{self.app}/{self.env}: {name} is tainted: {'; '.join(fresh)} "
                                  f"({'replacing it' if self.policy.drift == 'replace' else 'reported only'})")

    def _heal(self, executor: Executor, target: Target, desired: Desired, started: float, holder: str) -> str:
        mem = self.memory
        gone = sorted(executor.failed | executor.tainted)
        since = min([mem.deaths[n][1] for n in gone if n in mem.deaths] or [0.0])
        try:
            executor.converge(target, desired, strict=True)
        except FactsChanged:
            self.again = True
            return "another instance failed meanwhile; passing again"
        except KilnError as exc:
            self._event(kinds.AGENT_FAILED, f"healing {self.app}/{self.env} failed: {exc.message}")
            self.ctx.out.warn(f"{self.app}/{self.env}: healing failed: {exc.message}")
            return "healing failed"
        # From the engine's death event when there was one, else from the start of this pass.
        took = time.time() - since if since else time.monotonic() - started
        for name in gone:
            mem.deaths.pop(name, None)
            mem.execs.pop(name, None)
        what = f"replaced {', '.join(gone)}" if gone else "restored the desired instances"
        message = f"{what} with {', '.join(sorted(executor.started)) or 'no new instance'} in {took:.2f}s"
        self._event(kinds.INSTANCE_REPLACED if gone else kinds.AGENT_RESTORED, f"{message} (agent {holder})")
        return message

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _unchanged(executor: Executor, seen: list[Instance]) -> None:
        """Stop converging when an instance fails that this pass did not judge (nor start)."""
        known = executor.failed | executor.started
        if any(not i.running and i.name not in known for i in seen):
            raise FactsChanged("another instance failed during the pass")

    def _forget(self, present: set[str]) -> None:
        """Drop what is remembered about instances that no longer exist."""
        mem = self.memory
        for table in (mem.deaths, mem.execs):
            for name in set(table) - present:
                del table[name]
        mem.counted &= present
        mem.exempt &= present
        mem.reported = {r for r in mem.reported if r.partition(": ")[0] in present}

    def _halted(self, cfg: EnvConfig) -> bool:
        window = self.policy.meltdown.window
        failures = len(self.ctx.ledger.events.of(self.app, self.env, kinds=(kinds.INSTANCE_FAILED,), limit=None,
                                              since=now() - timedelta(seconds=window)))
        instances = sum(s.replicas for s in cfg.services)
        stop = halted(failures, self.policy.meltdown, instances)
        if self.memory.halted is None:
            self.memory.halted = self._halted_on_record()
        if stop != self.memory.halted:
            self.memory.halted = stop
            allowed = limit(self.policy.meltdown, instances)
            if stop:
                self._event(kinds.AGENT_HALTED, f"{failures} instance failures within {window:g}s exceed the limit of "
                                            f"{allowed}: self-healing stops until they age out")
                self.ctx.out.warn(f"{self.app}/{self.env}: meltdown guard: {failures} failures within {window:g}s; "
                                  "not replacing instances")
            else:
                self._event(kinds.AGENT_RESUMED, f"failures within {window:g}s are back within the limit of {allowed}; "
                                             "self-healing resumes")
        return stop

    def _halted_on_record(self) -> bool:
        last = self.ctx.ledger.events.of(self.app, self.env, kinds=(kinds.AGENT_HALTED, kinds.AGENT_RESUMED), limit=1)
        return bool(last) and last[-1].kind == kinds.AGENT_HALTED

    def _paused_instances(self, containers: list[ContainerFacts]) -> frozenset[str]:
        """Instances of a blue-green release waiting for `kiln promote`: that rollout owns them."""
        waiting = {str(r.to_release) for r in self.ctx.ledger.rollouts.unfinished(self.app, self.env)
                   if r.state == PAUSED}
        return frozenset(c.name for c in containers if c.label("release") in waiting)

    def _event(self, kind: str, message: str) -> None:
        self.ctx.ledger.events.record(self.app, self.env, kind, message)
