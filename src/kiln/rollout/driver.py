"""Runs a rollout's phases (see rollout/strategy.py) and persists its progress in the ledger.

Each phase is idempotent and the index of the phase being run is written before it starts, so
a rollout interrupted anywhere (even by `kill -9`) can be resumed from that phase, or undone.
Instances come and go only through the executor; this module adds hooks, smoke checks, traffic
weights and canary analysis."""

from __future__ import annotations

import http.client
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, assert_never

from kiln import faults
from kiln.errors import LedgerError, RolloutError
from kiln.ledger.kinds import PHASES_DONE, STEP_PHASE, ActionState, RolloutState
from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.providers.base import ROLE_LABEL, ContainerFacts, Engine, Role
from kiln.rollout.executor import Executor, Target
from kiln.rollout.instances import instance_spec
from kiln.rollout.strategy import Phase, PhaseKind, Sample, canary_weights, count, judge
from kiln.router.base import Router
from kiln.router.haproxy_api import ServerStat
from kiln.spec.models import RolloutPolicy as Policy
from kiln.spec.smoke import SmokeCheck, check_problem

ANALYSIS_INTERVAL = 0.5  # seconds between two reads of HAProxy's statistics during a canary pause


@dataclass
class Progress:
    """What the ledger keeps of a rollout so that any kiln process can carry it on."""

    phases: list[Phase]
    index: int
    policy: Policy
    extra: dict[str, object] = field(default_factory=dict)  # e.g. the idle old set blue-green keeps

    def data(self) -> dict[str, object]:
        return {**self.extra, "phases": [str(p) for p in self.phases], "index": self.index,
                "policy": self.policy.model_dump(mode="json")}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Progress:
        """The progress a rollout row recorded; LedgerError when it is incomplete or unreadable."""
        extra = {k: v for k, v in data.items() if k not in ("phases", "index", "policy")}
        try:
            return cls([Phase.parse(p) for p in data["phases"]], int(data["index"]),
                       Policy.model_validate(data["policy"]), extra)
        except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise LedgerError(f"a rollout's recorded progress cannot be read ({type(exc).__name__}: {exc}).",
                              "It was probably recorded by another kiln version; `kiln rollout show` lists "
                              "its steps.") from None


class Driver:
    def __init__(self, runtime: Engine, router: Router, ledger: Ledger, out: Output, rollout_id: int,
                 target: Target, executor: Executor) -> None:
        self.runtime, self.router, self.ledger, self.out = runtime, router, ledger, out
        self.rollout_id = rollout_id
        self.target = target
        self.ex = executor
        svc = target.cfg.public_service
        self.routed = svc.name if svc else None

    # --- the phase loop -------------------------------------------------------------------

    def run(self, progress: Progress) -> Literal[RolloutState.SUCCEEDED, RolloutState.PAUSED]:
        """Run phases from progress.index on; returns SUCCEEDED or PAUSED (awaiting promotion)."""
        while progress.index < len(progress.phases):
            phase = progress.phases[progress.index]
            self.ledger.rollouts.set_phase(self.rollout_id, str(phase), progress.data())
            if phase.kind is PhaseKind.PROMOTION:
                self.out.done(f"v{self.target.release.number} is healthy and waits on {self.target.cfg.preview_url}; "
                              "`kiln promote` switches traffic to it, `kiln rollback` drops it")
                return RolloutState.PAUSED
            self._check_abort()
            self.ledger.rollouts.record_step(self.rollout_id, STEP_PHASE, str(phase), ActionState.STARTED)
            detail = self._phase(phase, progress)
            self.ledger.rollouts.record_step(self.rollout_id, STEP_PHASE, str(phase), ActionState.DONE, detail)
            progress.index += 1
        self.ledger.rollouts.set_phase(self.rollout_id, PHASES_DONE, progress.data())
        return RolloutState.SUCCEEDED

    def _phase(self, phase: Phase, progress: Progress) -> str:
        policy = progress.policy
        match phase.kind:
            case PhaseKind.BEFORE_TRAFFIC | PhaseKind.AFTER_TRAFFIC:
                argv = policy.before_traffic if phase.kind is PhaseKind.BEFORE_TRAFFIC else policy.after_traffic
                if argv is None:
                    raise RolloutError(f"the rollout has a {phase} phase but its policy no {phase} hook.")
                return self._hook(phase.kind, argv, policy.hook_timeout)
            case PhaseKind.ROLL:
                replicas = self.target.cfg.lead_service.replicas
                self.ex.converge(self.target, self.target.desired(
                    surge=count(policy.max_surge, replicas, round_up=True),
                    unavailable=count(policy.max_unavailable, replicas, round_up=False)))
                return ""
            case PhaseKind.START:
                # The whole new set beside the old one, at weight 0: no public traffic yet. The
                # preview port shows this release only.
                self._clear_preview(keep=set(self._sets()[0]))
                self.ex.converge(self.target, self.target.desired(
                    weight=0, hold=True, preview=bool(self.target.cfg.preview_port and self.routed)))
                return ""
            case PhaseKind.SMOKE:
                return self._smoke(policy.smoke)
            case PhaseKind.SHIFT:
                if phase.index is None or phase.index >= len(policy.steps):
                    raise RolloutError(f"the rollout has a {phase} phase but its policy no such canary step.")
                step = policy.steps[phase.index]
                return self._canary_step(step.weight, step.pause, policy)
            case PhaseKind.SWITCH:
                return self._switch(progress)
            case PhaseKind.PROMOTION:
                raise AssertionError("promotion pauses the rollout in run(); it is never run as a phase")
            case _:
                assert_never(phase.kind)

    # --- phases -------------------------------------------------------------------------------

    def _hook(self, phase: PhaseKind, argv: tuple[str, ...], timeout: float) -> str:
        svc = self.target.cfg.lead_service
        number = self.target.release.number
        name = f"kiln-{self.target.cfg.app}-{self.target.cfg.env}-{phase.replace('_', '-')}-v{number}-{secrets.token_hex(3)}"
        spec = instance_spec(self.target.cfg, svc.model_copy(update={"command": argv}), number,
                             self.target.release.image, name)
        spec = replace(spec, labels={**spec.labels, ROLE_LABEL: Role.HOOK.value}, health_command=None)
        self.out.step(f"running the {phase} hook: {' '.join(argv)}")
        start = time.monotonic()
        code, output = self.runtime.run_once(spec, timeout)
        took = time.monotonic() - start
        if code != 0:
            what = f"did not finish within {timeout:g}s" if code is None else f"exited with code {code}"
            tail = self.ex.mask("\n".join(output.splitlines()[-10:]))
            raise RolloutError(f"the {phase} hook `{' '.join(argv)}` {what}." + (f" Its last output:\n{tail}" if tail else ""))
        return f"exit 0 after {took:.1f}s"

    def _smoke(self, checks: tuple[SmokeCheck, ...]) -> str:
        cfg = self.target.cfg
        targets: list[tuple[str, Callable[[SmokeCheck], tuple[int, str]]]]
        if cfg.preview_port:
            targets = [(f"preview port {cfg.preview_port}", lambda check: self.router.get(check.path, check.timeout))]
        else:  # no preview port: each new instance directly, as its engine reaches it
            svc = cfg.public_service
            port = svc.port if svc else None
            if svc is None or port is None:
                raise RolloutError(f"smoke checks need a public service with a port in {cfg.app}/{cfg.env}.")
            def on(c: ContainerFacts) -> Callable[[SmokeCheck], tuple[int, str]]:
                return lambda check: self.runtime.get(c, port, check.path, check.timeout)
            targets = [(c.name, on(c)) for c in self.ex.containers()
                       if c.label("service") == svc.name and self.target.same_as(c)]
        for check in checks:
            for where, get in targets:
                problem = _smoke_problem(check, get)
                if problem:
                    raise RolloutError(f"smoke check GET {check.path} on {where} failed: {self.ex.mask(problem)}.")
                self.out.step(f"smoke check GET {check.path} on {where} passed")
        return f"{len(checks)} check(s) passed on {len(targets)} target(s)"

    def _canary_step(self, percent: int, pause: float, policy: Policy) -> str:
        new, old = self._sets()
        self.router.set_weights(canary_weights(new, old, percent))
        self.out.step(f"canary: {percent}% of requests go to v{self.target.release.number} "
                      f"for {pause:g}s while kiln compares it with the baseline")
        before = self.router.servers()
        end = time.monotonic() + pause
        verdict, canary, baseline = None, Sample(0, 0, 0), Sample(0, 0, 0)
        while True:
            now = self.router.servers()
            canary, baseline = _sample(before, now, new), _sample(before, now, old)
            verdict = judge(canary, baseline, policy.analysis)
            if verdict or time.monotonic() >= end:
                break
            self._check_abort()
            time.sleep(ANALYSIS_INTERVAL)
        summary = (f"{percent}%: canary {canary.responses} responses, {canary.error_rate:.1f}% 5xx, "
                   f"{canary.mean_ms:.0f} ms; baseline {baseline.responses} responses, "
                   f"{baseline.error_rate:.1f}% 5xx, {baseline.mean_ms:.0f} ms")
        if verdict:
            raise RolloutError(f"canary analysis failed at {percent}%: {verdict}.")
        self.out.step("canary analysis passed: " + summary)
        return summary

    def _switch(self, progress: Progress) -> str:
        policy = progress.policy
        new, old = self._sets()
        self.router.set_weights(canary_weights(new, old, 100))  # one request: all traffic moves at once
        faults.point("switched")
        self._clear_preview(keep=set())  # the release is public now; the preview port waits for the next
        self.out.step(f"all traffic goes to v{self.target.release.number}")
        keep: frozenset[str] = frozenset()
        if policy.strategy == "blue-green" and policy.keep_old > 0 and old:
            keep = frozenset(old)
            progress.extra.update(kept=sorted(keep), keep_until=datetime.now(UTC).timestamp() + policy.keep_old)
            self.ledger.rollouts.set_phase(self.rollout_id, str(Phase(PhaseKind.SWITCH)), progress.data())
            self.out.step(f"the old set stays running, idle, for {policy.keep_old:g}s so that `kiln rollback` is instant")
        # Old instances now take no traffic: retiring them only waits for their in-flight requests.
        self.ex.converge(self.target, self.target.desired(keep=keep))
        return f"kept {len(keep)} old instance(s) idle" if keep else ""

    # --- helpers ------------------------------------------------------------------------------

    def _check_abort(self) -> None:
        """Stop (and so converge back) when someone asked to abort this rollout (`kiln rollout
        abort`, the API)."""
        who = self.ledger.rollouts.abort_requested(self.rollout_id)
        if who:
            raise RolloutError(f"aborted by {who}")

    def _clear_preview(self, keep: set[str]) -> None:
        for name in self.router.servers(preview=True):
            if name not in keep:
                self.router.remove_preview(name)

    def _sets(self) -> tuple[list[str], list[str]]:
        """Router servers of the new release and of everything else (the baseline)."""
        servers = self.router.servers()
        mine = {c.name for c in self.ex.containers() if self.target.same_as(c)}
        new = sorted(n for n in servers if n in mine)
        return new, sorted(n for n in servers if n not in mine)


def _smoke_problem(check: SmokeCheck, get: Callable[[SmokeCheck], tuple[int, str]]) -> str | None:
    """Send one check's request (once) and judge the answer."""
    try:
        status, body = get(check)
    except (OSError, http.client.HTTPException) as exc:
        return check_problem(check, None, "", f"{exc.__class__.__name__}: {exc}")
    return check_problem(check, status, body)


def _sample(before: dict[str, ServerStat], now: dict[str, ServerStat], names: list[str]) -> Sample:
    responses = errors = 0
    weighted_ms = 0.0
    for name in names:
        if name not in now:
            continue
        first = before.get(name)
        delta = now[name].responses - (first.responses if first else 0)
        responses += delta
        errors += now[name].errors - (first.errors if first else 0)
        weighted_ms += now[name].response_ms * max(delta, 0)
    return Sample(responses, errors, weighted_ms / responses if responses > 0 else 0.0)
