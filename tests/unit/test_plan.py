"""kiln.rollout.plan.plan: the rollout's decisions, from desired state and observed facts.

The executor runs only the first step of a plan, observes again and plans again. The simulations
below do the same against a fake list of facts, checking the zero-downtime invariant after every
action."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from kiln.rollout.plan import (
    FULL,
    AwaitHealthy,
    Desired,
    Instance,
    Remove,
    Route,
    Start,
    Unroute,
    plan,
)

WEB = "web"


def serving(name, release, service=WEB):
    """A routed instance that is up in the router, with its full weight."""
    return Instance(name, service, release, running=True, ready=True, in_router=True, weight=FULL)


def starting(name, release, service=WEB, in_router=False):
    """Started, not yet ready."""
    return Instance(name, service, release, running=True, ready=False, in_router=in_router)


def healthy(name, release, service):
    """A non-routed instance passing its check."""
    return Instance(name, service, release, running=True, ready=True)


def dead(name, release, service=WEB, in_router=False):
    return Instance(name, service, release, running=False, ready=False, in_router=in_router)


def desired(release, surge=None, unavailable=0, **replicas):
    return Desired(release, replicas or {WEB: 3}, WEB, surge, unavailable)


def names(task):
    return {a.name for a in task if not isinstance(a, Start)}


# --- first deploy, starts and surge -----------------------------------------------------------------


def test_first_deploy_starts_every_replica_in_one_step():
    assert plan(desired(1, web=3), []) == [[(Start(WEB, 1),)] * 3]


def test_first_deploy_of_several_services():
    d = Desired(1, {"web": 2, "worker": 1, "idle": 0}, WEB)
    assert plan(d, []) == [[(Start("web", 1),), (Start("web", 1),), (Start("worker", 1),)]]


OLD3 = [serving("o1", 1), serving("o2", 1), serving("o3", 1)]


def test_surge_is_how_many_instances_may_run_above_the_desired_count():
    assert plan(desired(2, surge=1, web=3), OLD3) == [[(Start(WEB, 2),)]]
    assert plan(desired(2, surge=2, web=3), OLD3) == [[(Start(WEB, 2),)] * 2]


def test_surge_does_not_slow_a_first_deploy():
    assert plan(desired(1, surge=1, web=3), []) == [[(Start(WEB, 1),)] * 3]


def test_surge_zero_retires_first_within_max_unavailable():
    steps = plan(desired(2, surge=0, unavailable=1, web=3), OLD3)
    assert len(steps) == 2 and len(steps[0]) == 1 and isinstance(steps[0][0][0], Unroute)
    assert steps[1] == [(Start(WEB, 2),)]


def test_max_unavailable_two_retires_two_at_once():
    steps = plan(desired(2, surge=0, unavailable=2, web=3), OLD3)
    assert len(steps[0]) == 2 and steps[1] == [(Start(WEB, 2),)] * 2


def test_surge_applies_per_service():
    d = Desired(2, {"web": 3, "worker": 2}, WEB, surge=1)
    facts = [*OLD3, healthy("w1", 1, "worker"), healthy("w2", 1, "worker")]
    assert plan(d, facts) == [[(Start("web", 2),), (Start("worker", 2),)]]


# --- weights, holding the old set, keeping idle instances -------------------------------------------


def test_hold_starts_the_new_set_beside_the_old_one_at_weight_zero():
    d = Desired(2, {WEB: 2}, WEB, weight=0, preview=True, hold=True)
    facts = [serving("o1", 1), serving("o2", 1)]
    assert plan(d, facts) == [[(Start(WEB, 2),)] * 2]
    facts += [starting("n1", 2), starting("n2", 2)]
    assert plan(d, facts) == [[(AwaitHealthy("n1"), Route("n1", 0, True)), (AwaitHealthy("n2"), Route("n2", 0, True))]]
    facts = facts[:2] + [replace(serving(n, 2), weight=0, in_preview=True) for n in ("n1", "n2")]
    assert plan(d, facts) == []  # both sets stay: the old serves, the new waits on the preview port


def test_a_routed_instance_at_the_wrong_weight_is_reweighted_without_a_health_wait():
    facts = [replace(serving("a", 1), weight=0), serving("b", 1)]
    assert plan(desired(1, web=2), facts) == [[(Route("a", FULL),)]]


def test_rollback_onto_an_idle_old_set_reweighs_it_then_retires_the_new_one():
    idle = [replace(serving("o1", 1), weight=0), replace(serving("o2", 1), weight=0)]
    facts = [*idle, serving("n1", 2), serving("n2", 2)]
    steps = plan(desired(1, web=2), facts)
    assert steps[0] == [(Route("o1"),), (Route("o2"),)]
    assert {n for task in steps[1] for n in names(task)} == {"n1", "n2"}


def test_kept_instances_are_left_alone():
    facts = [replace(serving("o1", 1), weight=0), serving("n1", 2)]
    assert plan(Desired(2, {WEB: 1}, WEB, keep=frozenset({"o1"})), facts) == []
    assert plan(Desired(2, {WEB: 1}, WEB), facts) == [[(Unroute("o1"), Remove("o1"))]]


def test_idle_old_instances_are_retired_before_serving_ones():
    facts = [serving("busy", 1), replace(serving("idle", 1), weight=0), serving("n1", 2)]
    assert plan(desired(2, web=2), facts)[0] == [(Unroute("idle"), Remove("idle"))]


def test_starts_only_what_is_missing():
    facts = [serving("a", 2), serving("b", 2)]
    assert plan(desired(2, web=3), facts) == [[(Start(WEB, 2),)]]


def test_rollout_starts_new_instances_beside_the_old_ones():
    facts = [serving("old1", 1), serving("old2", 1)]
    assert plan(desired(2, web=2), facts) == [[(Start(WEB, 2),)] * 2]


# --- bringing new instances in --------------------------------------------------------------------


def test_new_routed_instances_await_health_then_route():
    facts = [serving("old1", 1), starting("new1", 2), starting("new2", 2)]
    steps = plan(desired(2, web=2), facts)
    assert steps[0] == [(AwaitHealthy("new1"), Route("new1")), (AwaitHealthy("new2"), Route("new2"))]


def test_new_unrouted_instances_only_await_health():
    d = Desired(2, {"web": 1, "worker": 1}, WEB)
    facts = [serving("web1", 2), Instance("wrk1", "worker", 2, running=True, ready=False)]
    assert plan(d, facts)[0] == [(AwaitHealthy("wrk1"),)]


def test_without_a_routed_service_nothing_is_routed():
    d = Desired(1, {"worker": 2}, None)
    facts = [Instance("w1", "worker", 1, True, False), Instance("w2", "worker", 1, True, False)]
    assert plan(d, facts) == [[(AwaitHealthy("w1"),), (AwaitHealthy("w2"),)]]


def test_old_instances_are_not_retired_before_new_ones_are_ready():
    facts = [serving("old1", 1), serving("old2", 1), starting("new1", 2), starting("new2", 2)]
    first = plan(desired(2, web=2), facts)[0]
    assert all(isinstance(task[0], AwaitHealthy) for task in first)
    assert not any(isinstance(a, (Unroute, Remove)) for task in first for a in task)


# --- retiring --------------------------------------------------------------------------------------


def test_old_instances_are_retired_once_new_ones_are_ready():
    facts = [serving("old1", 1), serving("old2", 1), serving("new1", 2), serving("new2", 2)]
    assert plan(desired(2, web=2), facts) == [[(Unroute("old1"), Remove("old1")), (Unroute("old2"), Remove("old2"))]]


def test_only_as_many_old_retired_as_new_are_ready():
    facts = [serving("old1", 1), serving("old2", 1), serving("old3", 1), serving("new1", 2)]
    steps = plan(desired(2, surge=1, web=3), facts)
    assert steps == [[(Unroute("old1"), Remove("old1"))], [(Start(WEB, 2),)]]


def test_retire_never_leaves_fewer_than_want_ready():
    facts = [serving("old1", 1), serving("old2", 1), serving("old3", 1), serving("new1", 2)]
    steps = plan(desired(2, web=3), facts)
    # 4 ready, 3 wanted: exactly one old instance goes now, leaving 3; two new ones then start.
    assert steps == [[(Unroute("old1"), Remove("old1"))], [(Start(WEB, 2),), (Start(WEB, 2),)]]


def test_retire_of_unrouted_instance_is_just_remove():
    d = Desired(2, {"web": 1, "worker": 1}, WEB)
    facts = [serving("web1", 2), healthy("wrk-old", 1, "worker"), healthy("wrk-new", 2, "worker")]
    assert plan(d, facts) == [[(Remove("wrk-old"),)]]


def test_retire_of_routed_instance_not_in_router_is_just_remove():
    facts = [serving("new1", 2), starting("old1", 1)]  # an old one that never made it into the router
    assert plan(desired(2, web=1), facts) == [[(Remove("old1"),)]]


def test_old_not_ready_instances_go_first():
    facts = [serving("old-ok", 1), starting("old-sick", 1, in_router=True), serving("new1", 2)]
    assert plan(desired(2, web=2), facts) == [[(Unroute("old-sick"), Remove("old-sick"))], [(Start(WEB, 2),)]]


def test_scale_down_retires_surplus():
    facts = [serving("a", 3), serving("b", 3), serving("c", 3)]
    steps = plan(desired(3, web=1), facts)
    assert len(steps) == 1 and len(steps[0]) == 2
    retired = set().union(*(names(t) for t in steps[0]))
    assert len(retired) == 2 and retired < {"a", "b", "c"}
    assert all(t == (Unroute(t[0].name), Remove(t[0].name)) for t in steps[0])


def test_scale_to_zero():
    facts = [serving("a", 3), serving("b", 3)]
    assert plan(desired(3, web=0), facts) == [[(Unroute("a"), Remove("a")), (Unroute("b"), Remove("b"))]]


def test_service_dropped_from_the_spec_is_retired():
    d = Desired(2, {"web": 1}, WEB)
    facts = [serving("web1", 2), healthy("wrk1", 1, "worker")]
    assert plan(d, facts) == [[(Remove("wrk1"),)]]


# --- dead instances -------------------------------------------------------------------------------------


def test_dead_instances_are_removed_first_while_replacements_start():
    facts = [serving("a", 1), dead("b", 1, in_router=True), dead("c", 1), starting("n", 2)]
    steps = plan(desired(2, web=2), facts)
    assert steps[0] == [(Unroute("b"), Remove("b")), (Remove("c"),), (Start(WEB, 2),)]
    assert steps[1] == [(AwaitHealthy("n"), Route("n"))]


def test_dead_instance_is_replaced_in_one_step():
    facts = [serving("a", 1), dead("b", 1)]
    assert plan(desired(1, web=2), facts) == [[(Remove("b"),), (Start(WEB, 1),)]]


def test_dead_instance_never_counts_as_serving():
    facts = [dead("a", 2, in_router=True), serving("old", 1)]
    steps = plan(desired(2, web=1), facts)
    assert steps == [[(Unroute("a"), Remove("a")), (Start(WEB, 2),)]]  # the old one stays for now


# --- tainted instances (drift) ----------------------------------------------------------------------


def test_tainted_instance_is_replaced_before_it_is_retired():
    facts = [serving("a", 1), Instance("b", WEB, 1, True, True, in_router=True, weight=FULL, tainted=True)]
    assert plan(desired(1, web=2), facts) == [[(Start(WEB, 1),)]]
    fresh = facts + [serving("c", 1)]
    assert plan(desired(1, web=2), fresh) == [[(Unroute("b"), Remove("b"))]]


def test_tainted_instance_is_replaced_even_while_other_releases_are_held():
    tainted = Instance("b", WEB, 1, True, True, in_router=True, weight=FULL, tainted=True)
    steps = plan(Desired(2, {WEB: 1}, WEB, hold=True), [serving("a", 1), tainted, serving("n", 2)])
    assert steps == [[(Unroute("b"), Remove("b"))]]


# --- convergence and abort ----------------------------------------------------------------------------


def test_converged_state_gives_no_steps():
    d = Desired(4, {"web": 2, "worker": 1}, WEB)
    facts = [serving("a", 4), serving("b", 4), healthy("w", 4, "worker")]
    assert plan(d, facts) == []


def test_abort_retires_the_new_release_and_keeps_the_old():
    facts = [serving("old1", 1), serving("old2", 1), starting("new1", 2), starting("new2", 2, in_router=True)]
    # aborting is planning back toward the previous release
    assert plan(desired(1, web=2), facts) == [[(Remove("new1"),), (Unroute("new2"), Remove("new2"))]]


def test_abort_restarts_old_instances_that_were_already_retired():
    facts = [serving("old1", 1), serving("new1", 2), serving("new2", 2)]
    steps = plan(desired(1, web=2), facts)
    # one surplus new instance goes (two stay serving), and the missing old one is started
    assert len(steps) == 2 and len(steps[0]) == 1
    assert steps[0][0] == (Unroute("new1"), Remove("new1"))  # of equals, the first listed goes
    assert steps[1] == [(Start(WEB, 1),)]


# --- simulation -------------------------------------------------------------------------------------------


class Sim:
    """Applies plan steps to a list of facts the way the executor would, one action at a time."""

    def __init__(self, facts, routed=WEB):
        self.facts = list(facts)
        self.routed = routed
        self.counter = itertools.count(1)
        self.steps_run = []
        self.checks = []

    def ready(self, service):
        # An idle instance (router weight 0) serves nothing, so it is no capacity.
        return sum(1 for i in self.facts if i.service == service and i.running and i.ready and i.weight != 0)

    def _find(self, name):
        for k, i in enumerate(self.facts):
            if i.name == name:
                return k, i
        raise AssertionError(f"plan acted on unknown instance {name}")

    def apply(self, action):
        if isinstance(action, Start):
            name = f"{action.service}-v{action.release}-{next(self.counter)}"
            self.facts.append(Instance(name, action.service, action.release, running=True, ready=False))
        elif isinstance(action, AwaitHealthy):
            k, i = self._find(action.name)
            assert i.running
            if i.service != self.routed:
                self.facts[k] = replace(i, ready=True)
        elif isinstance(action, Route):
            k, i = self._find(action.name)
            assert i.service == self.routed
            self.facts[k] = replace(i, ready=True, in_router=True, weight=action.weight, in_preview=action.preview)
        elif isinstance(action, Unroute):
            k, i = self._find(action.name)
            assert i.in_router, f"unrouting {i.name}, which is not in the router"
            self.facts[k] = replace(i, ready=False if i.service == self.routed else i.ready, in_router=False,
                                    weight=None, in_preview=False)
        elif isinstance(action, Remove):
            k, i = self._find(action.name)
            assert not i.in_router, f"removing {i.name} while it is still in the router"
            del self.facts[k]
        else:
            raise AssertionError(action)
        for check in self.checks:
            check(self)

    def converge(self, d, limit=200):
        for _ in range(limit):
            steps = plan(d, self.facts)
            if not steps:
                return
            step = steps[0]
            acted_on = [n for task in step for n in names(task)]
            assert len(acted_on) == len(set(acted_on)), f"two parallel tasks touch the same instance: {step}"
            self.steps_run.append(step)
            # Tasks of one step run at the same time; check the invariant after each action of each.
            for task in step:
                for action in task:
                    self.apply(action)
        raise AssertionError(f"did not converge in {limit} steps; facts: {self.facts}")

    def assert_converged_to(self, d):
        for svc in set(d.replicas) | {i.service for i in self.facts}:
            mine = [i for i in self.facts if i.service == svc]
            want = d.replicas.get(svc, 0)
            assert len(mine) == want, (svc, mine)
            assert all(i.release == d.release and i.running and i.ready for i in mine), mine
            assert all(i.in_router == (svc == d.routed) for i in mine), mine
        assert plan(d, self.facts) == []


def keeps_at_least(want, service=WEB):
    def check(sim):
        assert sim.ready(service) >= want, f"only {sim.ready(service)} ready {service} instances: {sim.facts}"
    return check


def deployed(release, replicas, routed=WEB):
    sim = Sim([], routed)
    d = Desired(release, replicas, routed)
    sim.converge(d)
    sim.assert_converged_to(d)
    sim.steps_run = []
    return sim


def test_simulated_first_deploy():
    sim = Sim([])
    d = Desired(1, {"web": 3, "worker": 2}, WEB)
    sim.converge(d)
    sim.assert_converged_to(d)
    assert len(sim.steps_run) == 2  # start everything, then bring everything in
    assert sim.ready("web") == 3 and sim.ready("worker") == 2


@pytest.mark.parametrize("surge", [None, 1, 2])
@pytest.mark.parametrize("want", [1, 2, 3, 5])
def test_simulated_rollout_keeps_want_ready_instances(want, surge):
    sim = deployed(1, {"web": want, "worker": 2})
    sim.checks.append(keeps_at_least(want))
    sim.checks.append(keeps_at_least(2, "worker"))
    peak = [0]
    sim.checks.append(lambda s: peak.__setitem__(0, max(peak[0], sum(i.service == WEB for i in s.facts))))
    d = Desired(2, {"web": want, "worker": 2}, WEB, surge)
    sim.converge(d)
    sim.assert_converged_to(d)
    for step in sim.steps_run:
        starts = [t for t in step if isinstance(t[0], Start) and t[0].service == WEB]
        assert len(starts) <= (surge or want)
    assert peak[0] <= want + (surge or want)


@pytest.mark.parametrize("surge", [None, 1])
def test_simulated_rollout_with_scale_change(surge):
    sim = deployed(1, {"web": 2})
    sim.checks.append(keeps_at_least(2))
    d = Desired(2, {"web": 4}, WEB, surge)
    sim.converge(d)
    sim.assert_converged_to(d)

    sim.checks = [keeps_at_least(1)]
    d = Desired(3, {"web": 1}, WEB, surge)
    sim.converge(d)
    sim.assert_converged_to(d)


@pytest.mark.parametrize("steps_before_abort", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("surge", [None, 1])
def test_simulated_abort_converges_back_without_dropping_below_want(steps_before_abort, surge):
    want = 3
    sim = deployed(1, {"web": want})
    sim.checks.append(keeps_at_least(want))
    forward = Desired(2, {"web": want}, WEB, surge)
    for _ in range(steps_before_abort):
        steps = plan(forward, sim.facts)
        if not steps:
            break
        for task in steps[0]:
            for action in task:
                sim.apply(action)
    back = Desired(1, {"web": want}, WEB, surge)
    sim.converge(back)
    sim.assert_converged_to(back)


def test_simulated_recovery_after_instances_die():
    sim = deployed(1, {"web": 3})
    sim.facts = [replace(i, running=False, ready=False) if k < 2 else i for k, i in enumerate(sim.facts)]
    sim.checks.append(keeps_at_least(1))
    d = Desired(1, {"web": 3}, WEB)
    sim.converge(d)
    sim.assert_converged_to(d)


def _random_facts(rng):
    facts = []
    for n in range(rng.randint(0, 7)):
        service = rng.choice(["web", "worker", "gone"])
        release = rng.choice([1, 2, 3])
        running = rng.random() < 0.8
        ready = running and rng.random() < 0.7
        in_router = service == WEB and (ready or rng.random() < 0.3)
        weight = rng.choice([0, FULL]) if in_router else None
        facts.append(Instance(f"i{n}", service, release, running, ready, in_router, weight))
    return facts


def test_simulated_random_states_converge_and_never_lose_ready_capacity():
    # Many small random starting points (any mix of releases, dead, sick and routed instances);
    # one test, not one per seed, to keep the suite fast. A failure names its seed.
    for seed in range(1500):
        rng = random.Random(seed)
        facts = _random_facts(rng)
        d = Desired(rng.choice([2, 3]), {"web": rng.randint(0, 4), "worker": rng.randint(0, 2)}, WEB,
                    rng.choice([None, 1, 2]))
        sim = Sim(facts)
        floor = {s: min(d.replicas[s], sim.ready(s)) for s in ("web", "worker")}
        sim.checks += [keeps_at_least(floor["web"], "web"), keeps_at_least(floor["worker"], "worker")]
        try:
            sim.converge(d)
            sim.assert_converged_to(d)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: desired {d}, start {facts}: {exc}") from None
