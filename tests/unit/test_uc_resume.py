"""A kiln killed at each fault point and inside each phase of a rollout, then the next kiln:
`kiln rollout resume`, or a later change, settles what it left. Before the traffic switch the
rollout is undone (the previous release serves as before); from the switch on (or in a rolling
rollout's health-gated roll) it is completed. The lock the killed kiln held names a dead pid and
is taken over."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable

import pytest

from kiln import faults
from kiln.ledger import kinds
from kiln.rollout import driver
from kiln.usecases.deploy import deploy, resume
from unit.world import Killed, World, kill_at

UNDONE = "interrupted before its traffic switch; undone"
BLUE_GREEN = "      strategy: blue-green\n      smoke: [{path: /ready}]\n"


def web(w: World, release: int) -> list[str]:
    return sorted(n for n, r in w.instances("production", "web").items() if r == release)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def killed(w: World, monkeypatch, policy: str, point: str = "", times: int = 1,
           arm: Callable[[], None] | None = None) -> tuple[list[str], int]:
    """Deploy v1 with `policy`, then v2 and kill kiln at fault `point` (its `times`-th passage)
    or where `arm` makes something raise Killed; leave the lock a killed kiln leaves. Returns v1's
    web instances and the rollout's id."""
    w.edit_spec("      strategy: rolling\n", policy)
    deploy(w.ctx, w.load(), "production")
    old = web(w, 1)
    w.change_code("print('v2')\n")
    with monkeypatch.context() as armed:
        armed.setattr(faults, "point", kill_at(point, times))
        if arm is not None:
            arm()
        with pytest.raises(Killed):
            deploy(w.ctx, w.load(), "production")
    w.ctx.ledger.locks.acquire("shop", "production", user="ann", host=socket.gethostname(), pid=dead_pid(),
                               reason="deploy", lease=30, holder_alive=lambda lock: True)
    [rollout] = w.ctx.ledger.rollouts.unfinished("shop", "production")
    assert (rollout.state, rollout.to_release, rollout.from_release) == ("running", 2, 1)
    return old, rollout.id


def assert_completed(w: World, rollout_id: int, settled_by_resume: bool = True) -> None:
    new = web(w, 2)
    assert len(new) == 2 and sorted(w.instances().values()) == [2, 2, 2]
    assert w.weights() == dict.fromkeys(new, 100) and w.serving() == dict.fromkeys(new, 2)
    assert sorted(r for r, _ in w.containers().values()) == [2, 2, 2]  # nothing of v1 left, not even stopped
    assert w.router().draining == set() and w.router().maint == set() and w.router().preview == set()
    rollout = w.ctx.ledger.rollouts.get(rollout_id)
    assert (rollout.state, rollout.phase, rollout.reason) == ("succeeded", "done", "")
    assert w.events()[-2:] == [(kinds.ROLLOUT_RESUMED, f"rollout {rollout_id} to v2"),
                               (kinds.ROLLOUT_SUCCEEDED, f"rollout {rollout_id}: v2 serving")]
    assert w.ctx.ledger.releases.current("shop", "production").number == 2
    assert w.ctx.ledger.locks.get("shop", "production") is None


def assert_undone(w: World, rollout_id: int, old: list[str]) -> None:
    assert web(w, 1) == old and sorted(w.instances().values()) == [1, 1, 1]
    assert sorted(r for r, _ in w.containers().values()) == [1, 1, 1]
    assert w.weights() == dict.fromkeys(old, 100) and w.router().preview == set()
    rollout = w.ctx.ledger.rollouts.get(rollout_id)
    assert (rollout.state, rollout.reason) == ("aborted", UNDONE)
    assert w.events()[-1] == (kinds.ROLLOUT_ABORTED, f"rollout {rollout_id} to v2: {UNDONE}")
    assert w.ctx.ledger.releases.current("shop", "production").number == 1
    assert w.ctx.ledger.releases.states("shop", "production") == {1: "serving", 2: "aborted"}


# (policy, fault point, its n-th passage, phase recorded when killed, completed?)
CASES = {
    "rolling-started": ("      strategy: rolling\n", "started", 1, "roll", True),
    "rolling-routed": ("      strategy: rolling\n", "routed", 2, "roll", True),
    "rolling-draining": ("      strategy: rolling\n", "draining", 1, "roll", True),
    "blue-green-started": (BLUE_GREEN, "started", 2, "start", False),
    "blue-green-routed": (BLUE_GREEN, "routed", 1, "start", False),
    "blue-green-switched": (BLUE_GREEN, "switched", 1, "switch", True),
    "blue-green-draining": (BLUE_GREEN, "draining", 1, "switch", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_after_a_kill_at_each_fault_point(w, monkeypatch, case):
    policy, point, times, phase, completed = CASES[case]
    old, rollout_id = killed(w, monkeypatch, policy, point, times)
    assert w.ctx.ledger.rollouts.get(rollout_id).phase == phase
    if point == "draining":
        assert len(w.router().draining) == 1 and w.router().draining < set(old)

    settled = resume(w.ctx, "shop", "production")

    assert [(r.id, r.state) for r in settled] == [(rollout_id, "succeeded" if completed else "aborted")]
    if completed:
        assert_completed(w, rollout_id)
        assert w.out.of("warn")[-1] == (f"rollout {rollout_id} to v2 was interrupted in its {phase} phase; "
                                        "completing it")
    else:
        assert_undone(w, rollout_id, old)


def test_a_rollout_killed_in_its_smoke_phase_is_undone(w, monkeypatch):
    def arm() -> None:
        def answer(facts, path):
            raise Killed("smoke")
        w.engine.answers = answer

    old, rollout_id = killed(w, monkeypatch, BLUE_GREEN, arm=arm)
    w.engine.answers = lambda facts, path: (200, "ok")
    assert w.ctx.ledger.rollouts.get(rollout_id).phase == "smoke"
    assert w.router().preview == set(web(w, 2))  # the new set waited on the preview port
    resume(w.ctx, "shop", "production")
    assert_undone(w, rollout_id, old)


def test_a_rollout_killed_inside_its_hook_is_undone_and_the_orphan_hook_container_removed(w, monkeypatch):
    hooks: list[str] = []

    def arm() -> None:
        def run_once(spec, timeout):
            w.engine.start(spec)  # the hook's container runs when kiln dies
            hooks.append(spec.name)
            raise Killed("before_traffic")
        monkeypatch.setattr(w.engine, "run_once", run_once)

    old, rollout_id = killed(w, monkeypatch, "      strategy: blue-green\n      before_traffic: [migrate]\n", arm=arm)
    monkeypatch.undo()
    assert w.ctx.ledger.rollouts.get(rollout_id).phase == "before_traffic"
    assert [c.name for c in w.engine.containers({"kiln.role": "hook"})] == hooks
    resume(w.ctx, "shop", "production")
    assert w.engine.containers({"kiln.role": "hook"}) == []
    assert f"removing {hooks[0]}, a hook container left by an interrupted rollout" in w.out.of("warn")
    assert_undone(w, rollout_id, old)


def test_a_canary_killed_during_its_analysis_is_undone(w, monkeypatch):
    def arm() -> None:
        class Clock:
            monotonic = staticmethod(lambda: 0.0)

            @staticmethod
            def sleep(_seconds: float) -> None:
                raise Killed("analysis")
        monkeypatch.setattr(driver, "time", Clock)

    old, rollout_id = killed(w, monkeypatch, "      strategy: canary\n      steps: [{weight: 50, pause: 1s}]\n",
                             arm=arm)
    monkeypatch.undo()
    assert w.ctx.ledger.rollouts.get(rollout_id).phase == "shift:0"
    new = web(w, 2)
    assert w.weights() == {**dict.fromkeys(old, 256), **dict.fromkeys(new, 256)}  # 50%: equal weights
    resume(w.ctx, "shop", "production")
    assert_undone(w, rollout_id, old)


def test_a_lock_held_by_a_live_process_is_not_taken_over(w):
    from kiln.errors import LockHeld

    w.ctx.ledger.locks.acquire("shop", "production", user="ann", host=socket.gethostname(), pid=os.getpid(),
                               reason="deploy", lease=30, holder_alive=lambda lock: True)
    with pytest.raises(LockHeld):
        resume(w.ctx, "shop", "production")


def test_resume_with_nothing_unfinished_does_nothing(w):
    deploy(w.ctx, w.load(), "production")
    events = w.events()
    assert resume(w.ctx, "shop", "production") == []
    assert w.events() == events


def test_a_rollout_killed_after_its_switch_is_completed_by_the_next_deploy_which_then_rolls_v3(w, monkeypatch):
    _, rollout_id = killed(w, monkeypatch, BLUE_GREEN, "switched")
    w.change_code("print('v3')\n")
    outcome = deploy(w.ctx, w.load(), "production")
    assert outcome.release.number == 3 and w.ctx.ledger.rollouts.get(rollout_id).state == "succeeded"
    last = w.rollouts()[-1]
    assert (last.from_release, last.to_release, last.state) == (2, 3, "succeeded")
    assert sorted(w.instances().values()) == [3, 3, 3]
