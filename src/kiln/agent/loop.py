"""`kiln agent`: keep every environment of an app at its current release, until stopped.

One agent leads each environment at a time: it holds the environment's agent lease (the lock
named ENV/agent in the ledger, renewed by a heartbeat), so a second agent stands by instead of
making duplicate replacements, and takes over when the first one's lease runs out. Engine
events (an instance died, was OOM-killed, turned unhealthy, someone exec'd into it) trigger a
pass at once; otherwise each environment is reconciled every `agent.interval`. When the engine
goes away the agent keeps trying to reconnect, and restores what died with the engine.

Every SAMPLE_EVERY seconds the agent also reads the per-server counters of the routers of the
environments it leads and records each release's traffic in the ledger (agent/sampling.py), for
the dashboard's plots; samples older than RETENTION are pruned."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta

from kiln.agent.reconcile import WATCHED, Reconciler
from kiln.agent.sampling import RETENTION, SAMPLE_EVERY, per_release
from kiln.context import Context
from kiln.engines import DEFAULT_ENGINE
from kiln.errors import EngineError, KilnError, LockHeld
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.providers.base import EngineEvent, Role, selector
from kiln.rollout.lock import Held, hold, lease_name
from kiln.router.haproxy_api import ServerStat
from kiln.spec.models import AgentPolicy

LEASE = 15.0  # seconds an agent that stopped renewing still leads its environments
RETRY = 2.0  # how often a standby agent asks for the lease
PRUNE_EVERY = 10.0  # how often expired previews are looked for


class _Disconnected:
    """Put on the queue when the engine's event stream broke."""


@dataclass
class _Lead:
    stack: ExitStack
    held: Held


class Agent:
    def __init__(self, ctx: Context, app: str, policies: dict[str, AgentPolicy],
                 engines: dict[str, str] | None = None) -> None:
        self.ctx, self.app = ctx, app
        # The engines to watch: each environment's (default: the default engine for all).
        self.engines = sorted(set((engines or {}).values()) or {DEFAULT_ENGINE})
        self.reconcilers = {env: Reconciler(ctx, app, env, policy) for env, policy in policies.items()}
        self.leads: dict[str, _Lead] = {}
        self.standby_said: set[str] = set()
        self.events: queue.Queue[object] = queue.Queue()
        self.stopping = threading.Event()
        self.readings: dict[str, tuple[float, dict[str, ServerStat]]] = {}  # env -> (when, router counters)

    def stop(self) -> None:
        """Stop soon (safe from a signal handler): the current pass ends, then leases are released."""
        self.stopping.set()
        self.events.put(None)  # wakes the loop from its wait

    def run(self, once: bool = False) -> None:
        stop = self.stopping
        if not once:
            for engine in self.engines:
                # Opened here first: two threads importing a provider at once can each see the
                # other's half-imported module (an ImportError).
                with contextlib.suppress(KilnError):
                    self.ctx.engine(engine)
                threading.Thread(target=self._watch, args=(stop, engine), name=f"kiln-agent-events-{engine}",
                                 daemon=True).start()
        due = {env: 0.0 for env in self.reconcilers}
        prune_at = sample_at = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= prune_at:
                    self._prune_previews()
                    prune_at = time.monotonic() + PRUNE_EVERY
                self._drain(due)
                for env in [e for e, at in due.items() if at <= time.monotonic()]:
                    due[env] = time.monotonic() + (self._pass(env) if self._lead(env) else RETRY)
                if time.monotonic() >= sample_at and not once:  # after the passes: the leads are known
                    self._sample()
                    sample_at = time.monotonic() + SAMPLE_EVERY
                if once:
                    return
                try:  # sleep until the next pass is due, or an engine event arrives
                    wake = min([*due.values(), sample_at])
                    self.events.put(self.events.get(timeout=max(0.0, wake - time.monotonic())))
                except queue.Empty:
                    pass
        finally:
            for env in list(self.leads):
                self._resign(env, "stopped")

    def _prune_previews(self) -> None:
        """Previews whose TTL ended are destroyed (any agent may; the preview's lock orders them)."""
        from kiln.usecases.environments import prune_previews

        try:
            for env in prune_previews(self.ctx, self.app):
                self.ctx.out.step(f"{time.strftime('%H:%M:%S')} {self.app}/{env}: preview expired; removed it")
        except KilnError as exc:  # another agent is pruning it, or the engine is away: next time
            self.ctx.out.warn(f"{self.app}: pruning previews: {exc.message}")

    def _sample(self) -> None:
        """Record each release's traffic since the previous reading, for the environments this
        agent leads; forget samples older than RETENTION."""
        for env in list(self.leads):
            try:
                release = self.ctx.ledger.releases.current(self.app, env)
                if release is None:
                    continue
                router = self.ctx.router(release.env_config())
                facts = router.facts()
                servers = router.servers() if facts is not None and facts.running else {}
                at = time.monotonic()
                last = self.readings.get(env)
                self.readings[env] = (at, servers)
                if last is not None:
                    self.ctx.ledger.samples.record(self.app, env, per_release(last[1], servers, at - last[0], now()))
            except KilnError as exc:  # the router or the ledger is away: the next reading starts afresh
                self.readings.pop(env, None)
                self.ctx.out.warn(f"{self.app}/{env}: sampling the router: {exc.message}")
        with contextlib.suppress(KilnError):
            self.ctx.ledger.samples.prune(now() - timedelta(seconds=RETENTION))

    # --- leadership ------------------------------------------------------------------------

    def _lead(self, env: str) -> bool:
        lead = self.leads.get(env)
        if lead and lead.held.lost.is_set():
            self._resign(env, "lost its lease")
            lead = None
        if lead:
            return True
        stack = ExitStack()
        try:
            held = stack.enter_context(hold(self.ctx.ledger, self.app, lease_name(env), "agent lease", lease=LEASE))
        except LockHeld as exc:
            if env not in self.standby_said:
                self.standby_said.add(env)
                self.ctx.out.step(f"{self.app}/{env}: standing by, {exc.lock.holder} leads it")
            return False
        self.leads[env] = _Lead(stack, held)
        self.standby_said.discard(env)
        self.reconcilers[env].engine_restarted()  # a new leader looks at everything afresh
        self.ctx.ledger.events.record(self.app, env, kinds.AGENT_LEADING, f"agent {held.lock.holder} watches {self.app}/{env}")
        self.ctx.out.step(f"{self.app}/{env}: watching (agent {held.lock.holder})")
        return True

    def _resign(self, env: str, why: str) -> None:
        lead = self.leads.pop(env)
        lead.stack.close()
        try:
            self.ctx.ledger.events.record(self.app, env, kinds.AGENT_RESIGNED, f"agent {lead.held.lock.holder} {why}")
        except KilnError:
            pass  # the ledger is unreachable: the lease simply runs out

    # --- passes and events ---------------------------------------------------------------------

    def _pass(self, env: str) -> float:
        """Run one pass; returns the seconds until the next one."""
        reconciler = self.reconcilers[env]
        try:
            said = reconciler.run()
        except EngineError as exc:
            self.ctx.out.warn(f"{self.app}/{env}: {exc.message}")
            reconciler.engine_restarted()
            return RETRY
        if said:
            self.ctx.out.step(f"{time.strftime('%H:%M:%S')} {self.app}/{env}: {said}")
        return 0.0 if reconciler.again else reconciler.policy.interval

    def _drain(self, due: dict[str, float]) -> None:
        """Hand queued engine events to their environments; those that call for it pass now."""
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Disconnected):
                for env, reconciler in self.reconcilers.items():
                    reconciler.engine_restarted()
                    due[env] = 0.0
                continue
            if not isinstance(item, EngineEvent):
                continue
            env = item.label("env") or ""
            watching = self.reconcilers.get(env)
            if watching is None:
                continue
            if item.label("role") == Role.INSTANCE and watching.note(item):
                due[env] = 0.0
            elif item.label("role") == Role.ROUTER and item.action in ("die", "destroy"):
                due[env] = 0.0

    def _watch(self, stop: threading.Event, engine: str) -> None:
        """Feed the engine's container events to the queue; reconnect when the engine goes away."""
        since: float | None = None
        backoff = 0.5
        ctx = self.ctx.derive(self.ctx.out, own_engines=True)  # an engine client is not shared between threads
        while not stop.is_set():
            try:
                for ev in ctx.engine(engine).events(selector(self.app), since=since):
                    if ev.action in WATCHED:
                        self.events.put(ev)
                    since, backoff = ev.at, 0.5
                    if stop.is_set():
                        return
            except EngineError:
                pass
            self.events.put(_Disconnected())
            stop.wait(backoff)
            backoff = min(5.0, backoff * 2)
