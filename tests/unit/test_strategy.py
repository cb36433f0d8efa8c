"""kiln.rollout.strategy: phases of each strategy, what happens to an interrupted rollout, canary
weights and analysis; and each strategy's first decisions through plan(), without Docker."""

from __future__ import annotations

import pytest

from kiln.rollout.plan import FULL, AwaitHealthy, Desired, Instance, Route, Start, plan
from kiln.rollout.strategy import (
    Phase,
    Sample,
    canary_weights,
    count,
    judge,
    phases,
    resume_forward,
)
from kiln.spec.models import Analysis, RolloutPolicy

WEB = "web"


def serving(name: str, release: int, weight: int = FULL) -> Instance:
    return Instance(name, WEB, release, running=True, ready=True, in_router=True, weight=weight)


def names(phase_list: list[Phase]) -> list[str]:
    """The phases as the ledger stores them."""
    return [str(p) for p in phase_list]


# --- phases ---------------------------------------------------------------------------------------


def test_rolling_phases():
    assert names(phases(RolloutPolicy(), False, False)) == ["roll"]
    assert names(phases(RolloutPolicy(), True, True)) == ["before_traffic", "roll", "after_traffic"]


def test_blue_green_phases():
    policy = RolloutPolicy(strategy="blue-green", smoke=({"path": "/health"},))
    assert names(phases(policy, False, False)) == ["start", "smoke", "switch"]
    manual = policy.model_copy(update={"promote": "manual"})
    assert names(phases(manual, True, False)) == ["start", "before_traffic", "smoke", "promotion", "switch"]


def test_canary_phases_one_shift_per_step_below_100():
    policy = RolloutPolicy(strategy="canary", steps=({"weight": 10}, {"weight": 50}, {"weight": 100}))
    assert names(phases(policy, False, True)) == ["start", "shift:0", "shift:1", "switch", "after_traffic"]


@pytest.mark.parametrize(("phase_list", "reached", "forward"), [
    (["roll"], 0, True),  # a rolling rollout is health-gated at every instance: complete it
    (["before_traffic", "roll"], 0, False),  # the hook may not have finished: undo
    (["start", "smoke", "switch"], 1, False),  # blue-green before its switch: undo
    (["start", "shift:0", "shift:1", "switch"], 2, False),  # canary analysis unfinished: undo
    (["start", "shift:0", "switch"], 2, True),  # the switch had begun: complete it
    (["start", "switch", "after_traffic"], 2, True),
    (["start", "switch"], 2, True),  # all phases ran; only the bookkeeping is missing
])
def test_interrupted_rollouts_are_completed_after_the_switch_and_undone_before(phase_list, reached, forward):
    assert resume_forward([Phase.parse(p) for p in phase_list], reached) is forward


# --- surge and unavailable counts ------------------------------------------------------------------


@pytest.mark.parametrize(("value", "replicas", "up", "expected"), [
    (2, 10, True, 2), ("25%", 10, True, 3), ("25%", 10, False, 2), ("100%", 3, True, 3), ("0%", 5, True, 0),
])
def test_count(value, replicas, up, expected):
    assert count(value, replicas, round_up=up) == expected


def test_rolling_with_surge_one_and_four_replicas_starts_one_beside_four_old():
    facts = [serving(f"o{i}", 1) for i in range(4)]
    d = Desired(2, {WEB: 4}, WEB, surge=count("25%", 4, True), unavailable=count(0, 4, False))
    assert plan(d, facts) == [[(Start(WEB, 2),)]]


# --- canary weights --------------------------------------------------------------------------------


def share(weights: dict[str, int], new: list[str]) -> float:
    total = sum(weights.values())
    return 100 * sum(weights[n] for n in new) / total


@pytest.mark.parametrize("percent", [1, 5, 10, 25, 50, 75, 90, 99])
@pytest.mark.parametrize(("n_new", "n_old"), [(1, 1), (2, 2), (1, 4), (4, 1), (3, 2)])
def test_canary_weights_give_the_declared_share(percent, n_new, n_old):
    new = [f"n{i}" for i in range(n_new)]
    old = [f"o{i}" for i in range(n_old)]
    weights = canary_weights(new, old, percent)
    assert all(0 < w <= 256 for w in weights.values())
    assert abs(share(weights, new) - percent) < max(1.5, percent * 0.1)


def test_canary_weights_at_the_ends():
    assert canary_weights(["n"], ["o"], 100) == {"n": FULL, "o": 0}
    assert canary_weights(["n"], ["o"], 0) == {"n": 0, "o": FULL}
    assert canary_weights(["n"], [], 10) == {"n": FULL}  # no baseline: the new set takes it all


def test_canary_and_blue_green_start_the_new_set_at_weight_zero_beside_the_old():
    facts = [serving("o1", 1), serving("o2", 1)]
    d = Desired(2, {WEB: 2}, WEB, weight=0, hold=True)
    assert plan(d, facts) == [[(Start(WEB, 2),)] * 2]
    started = [*facts, Instance("n1", WEB, 2, True, False), Instance("n2", WEB, 2, True, False)]
    assert plan(d, started) == [[(AwaitHealthy("n1"), Route("n1", 0)), (AwaitHealthy("n2"), Route("n2", 0))]]


def test_after_the_switch_the_old_set_is_retired():
    facts = [serving("o1", 1, weight=0), serving("n1", 2)]
    steps = plan(Desired(2, {WEB: 1}, WEB), facts)
    assert [a.name for task in steps[0] for a in task] == ["o1", "o1"]  # Unroute, then Remove


# --- analysis --------------------------------------------------------------------------------------

RULES = Analysis(max_error_rate=1.0, max_latency_ratio=2.0, min_latency=0.05, min_requests=10)


def test_a_canary_answering_5xx_fails_once_it_has_enough_responses():
    assert judge(Sample(5, 5, 3), Sample(100, 0, 3), RULES) is None  # too few to judge yet
    verdict = judge(Sample(20, 5, 3), Sample(200, 0, 3), RULES)
    assert verdict == "canary error rate 25.0% (5 of 20 responses were 5xx) is above max_error_rate 1% (baseline 0.0%)"


def test_a_canary_within_thresholds_passes():
    assert judge(Sample(100, 1, 30), Sample(900, 0, 25), RULES) is None


def test_a_slow_canary_fails_the_latency_test():
    verdict = judge(Sample(100, 0, 300), Sample(900, 0, 100), RULES)
    assert verdict == "canary mean response time 300 ms is above 2x the baseline's 100 ms"


def test_latency_below_the_noise_floor_never_fails():
    assert judge(Sample(100, 0, 20), Sample(900, 0, 2), RULES) is None


def test_error_rate_is_zero_without_responses():
    assert Sample(0, 0, 0).error_rate == 0.0
