"""usecases/deploy.py on the fakes: deploy, no-op, abort, rollback, blue-green with smoke checks
and manual promotion, canary analysis, hooks, locks."""

from __future__ import annotations

import os
import re
import socket

import pytest

from kiln.errors import KilnError, LockHeld, RolloutError, UsageError
from kiln.ledger import kinds
from kiln.usecases.deploy import deploy, promote, rollback
from unit.world import World

WEB = re.compile(r"kiln-shop-production-web-v(\d+)-[0-9a-f]{6}")


def web(w: World, release: int, env: str = "production") -> list[str]:
    return sorted(n for n, r in w.instances(env, "web").items() if r == release)


def worker(w: World, release: int) -> list[str]:
    return sorted(n for n, r in w.instances("production", "worker").items() if r == release)


def v2(w: World) -> None:
    w.change_code("print('v2')\n")


def use(w: World, policy: str) -> None:
    """Give the web service's rollout this YAML body (indented under `rollout:`)."""
    w.edit_spec("      strategy: rolling\n", policy)


# --- deploy -------------------------------------------------------------------------------------


def test_first_deploy_records_v1_starts_every_service_and_routes_the_public_one(w):
    outcome = deploy(w.ctx, w.load(), "production")

    assert (outcome.release.number, outcome.changed, outcome.state) == (1, True, "succeeded")
    image = w.engine.image_id(outcome.release.image_tag)
    assert outcome.release.image == image and outcome.release.image_tag.startswith("kiln/shop:")
    assert (outcome.release.commit, outcome.release.dirty, outcome.release.note) == (None, False, "")
    assert len(web(w, 1)) == 2 and len(worker(w, 1)) == 1
    assert sorted(w.instances().values()) == [1, 1, 1]
    assert all(WEB.fullmatch(n) for n in web(w, 1))
    assert w.serving() == dict.fromkeys(web(w, 1), 1)
    assert w.weights() == dict.fromkeys(web(w, 1), 100)
    assert w.router().log[0] == ("ensure", "kiln-shop-production-router")
    assert "kiln-shop-production" in w.engine.networks
    [rollout] = w.rollouts()
    assert (rollout.from_release, rollout.to_release, rollout.strategy, rollout.state, rollout.phase) == \
        (None, 1, "rolling", "succeeded", "done")
    assert rollout.data["phases"] == ["roll"]
    assert w.events() == [(kinds.ROLLOUT_STARTED, "rollout 1 to v1 (rolling)"),
                          (kinds.ROLLOUT_SUCCEEDED, "rollout 1: v1 serving")]
    # Each web instance: started, healthy, routed; journalled before and after each action.
    steps = w.ctx.ledger.rollouts.steps(rollout.id)
    for name in web(w, 1):
        assert [(s.action, s.state) for s in steps if s.target == name] == [
            ("Start", "started"), ("Start", "done"), ("AwaitHealthy", "started"), ("AwaitHealthy", "done"),
            ("Route", "started"), ("Route", "done")]
    assert [(s.action, s.target, s.state) for s in steps if s.action == "Phase"] == [
        ("Phase", "roll", "started"), ("Phase", "roll", "done")]


def test_a_new_image_is_v2_and_the_old_set_leaves_only_after_the_new_one_serves(w):
    deploy(w.ctx, w.load(), "production")
    old_web, old_worker = web(w, 1), worker(w, 1)
    v2(w)
    outcome = deploy(w.ctx, w.load(), "production")

    assert (outcome.release.number, outcome.changed) == (2, True)
    assert outcome.release.image != w.ctx.ledger.releases.get("shop", "production", 1).image
    assert sorted(w.containers().values()) == [(2, "running")] * 3  # the old ones are removed, not just stopped
    assert w.serving() == dict.fromkeys(web(w, 2), 2) and len(web(w, 2)) == 2
    rollout = w.rollouts()[-1]
    assert (rollout.from_release, rollout.to_release, rollout.state) == (1, 2, "succeeded")
    steps = [(s.action, s.target, s.state) for s in w.ctx.ledger.rollouts.steps(rollout.id)]
    last_routed = max(steps.index(("Route", n, "done")) for n in web(w, 2))
    first_unrouted = min(steps.index(("Unroute", o, "started")) for o in old_web)
    assert last_routed < first_unrouted
    # Old instances: out of the router, then stopped, then removed.
    for o in old_web:
        assert steps.index(("Unroute", o, "done")) < steps.index(("Remove", o, "started"))
        assert [verb for verb, name in w.engine.log if name == o] == ["start", "stop", "remove"]
    assert [verb for verb, name in w.engine.log if name == old_worker[0]] == ["start", "stop", "remove"]
    assert w.ctx.ledger.releases.states("shop", "production") == {1: "served", 2: "serving"}


def test_deploying_what_serves_again_changes_nothing(w):
    deploy(w.ctx, w.load(), "production")
    running, events, log = w.instances(), w.events(), list(w.engine.log)
    outcome = deploy(w.ctx, w.load(), "production")

    assert (outcome.release.number, outcome.changed, outcome.state) == (1, False, "succeeded")
    assert w.out.of("done")[-1] == "Nothing to do: v1 is serving as desired"
    assert w.instances() == running and w.engine.log == log and w.events() == events
    assert len(w.rollouts()) == 1 and len(w.ctx.ledger.releases.of("shop", "production")) == 1


def test_the_same_image_with_a_lost_instance_is_healed_by_a_new_rollout_of_the_same_release(w):
    deploy(w.ctx, w.load(), "production")
    lost = web(w, 1)[0]
    w.engine.kill(lost)
    outcome = deploy(w.ctx, w.load(), "production")

    assert (outcome.release.number, outcome.changed) == (1, False)  # the release did not change
    assert len(w.rollouts()) == 2 and w.rollouts()[-1].to_release == 1
    assert lost not in w.containers() and len(web(w, 1)) == 2 and lost not in web(w, 1)
    assert w.serving() == dict.fromkeys(web(w, 1), 1)


def test_a_config_change_alone_is_a_new_release_of_the_same_image(w):
    first = deploy(w.ctx, w.load(), "production").release
    w.edit_spec("    replicas: 1\n", "    replicas: 2\n")  # the worker
    second = deploy(w.ctx, w.load(), "production").release
    assert second.number == 2 and second.image == first.image and second.config_digest != first.config_digest
    assert len(worker(w, 2)) == 2 and len(web(w, 2)) == 2


def test_a_release_whose_instances_crash_is_aborted_and_the_previous_one_keeps_serving(w):
    deploy(w.ctx, w.load(), "production")
    serving = w.serving()
    v2(w)
    w.engine.crash_on_start.add(2)
    with pytest.raises(RolloutError) as err:
        deploy(w.ctx, w.load(), "production")

    crashed = re.search(r"instance (kiln-shop-production-\w+-v2-[0-9a-f]{6}) exited", err.value.message)
    assert crashed is not None
    reason = f"instance {crashed.group(1)} exited. Its last output:\nfake crash"
    assert err.value.message == f"the rollout to v2 was aborted: {reason}"
    assert err.value.hint == "v1 keeps serving."
    assert w.serving() == serving and sorted(w.instances().values()) == [1, 1, 1]
    assert all(r == 1 for r, _ in w.containers().values())  # the crashed ones were removed
    rollout = w.rollouts()[-1]
    assert (rollout.to_release, rollout.state, rollout.reason, rollout.phase) == (2, "aborted", reason, "roll")
    assert w.events()[-2:] == [(kinds.ROLLOUT_STARTED, "rollout 2 to v2 (rolling)"),
                               (kinds.ROLLOUT_ABORTED, f"rollout 2 to v2: {reason}")]
    assert w.ctx.ledger.releases.states("shop", "production") == {1: "serving", 2: "aborted"}
    assert w.ctx.ledger.releases.current("shop", "production").number == 1


def test_a_failed_first_deploy_leaves_nothing_running(w):
    w.engine.crash_on_start.add(1)
    with pytest.raises(RolloutError) as err:
        deploy(w.ctx, w.load(), "production")
    assert err.value.hint == "nothing was serving before."
    assert w.containers() == {} and w.router().added == {}
    assert w.rollouts()[0].state == "aborted"
    # Fixed and deployed again: the same image and config are retried as v1, not recorded anew.
    w.engine.crash_on_start.clear()
    outcome = deploy(w.ctx, w.load(), "production")
    assert outcome.release.number == 1 and "Retrying release v1 of shop/production" in w.out.of("step")
    assert len(w.ctx.ledger.releases.of("shop", "production")) == 1


def test_an_instance_that_never_gets_healthy_aborts_at_its_deadline(w):
    w.edit_spec("deadline: 2s", "deadline: 100ms")
    deploy(w.ctx, w.load(), "production")
    v2(w)
    real = w.engine.start

    def start_sick(spec):
        if spec.labels.get("kiln.release") == "2" and spec.labels.get("kiln.service") == "web":
            w.engine.unhealthy.add(spec.name)
        return real(spec)

    w.engine.start = start_sick  # type: ignore[method-assign]
    with pytest.raises(RolloutError, match=r"new instance kiln-shop-production-web-v2-[0-9a-f]{6} did not pass its "
                                           r"healthcheck \(HTTP GET /health on port 8000\) within 0.1s"):
        deploy(w.ctx, w.load(), "production")
    assert sorted(w.instances().values()) == [1, 1, 1] and len(w.serving()) == 2


# --- rollback -----------------------------------------------------------------------------------


def test_rollback_goes_to_the_release_that_served_before_as_a_new_release(w):
    deploy(w.ctx, w.load(), "production")
    v1_image = w.ctx.ledger.releases.get("shop", "production", 1).image
    v2(w)
    deploy(w.ctx, w.load(), "production")
    outcome = rollback(w.ctx, w.load().spec, "production", None)

    assert (outcome.release.number, outcome.changed) == (3, True)
    assert (outcome.release.image, outcome.release.note) == (v1_image, "rollback to v1")
    assert sorted(w.instances().values()) == [3, 3, 3] and w.serving() == dict.fromkeys(web(w, 3), 3)
    assert w.rollouts()[-1].strategy == "rolling"
    assert w.ctx.ledger.releases.states("shop", "production") == {1: "served", 2: "served", 3: "serving"}


def test_rollback_to_a_given_release(w):
    deploy(w.ctx, w.load(), "production")
    v2(w)
    deploy(w.ctx, w.load(), "production")
    w.change_code("print('v3')\n")
    deploy(w.ctx, w.load(), "production")
    outcome = rollback(w.ctx, w.load().spec, "production", 1)
    assert (outcome.release.number, outcome.release.note) == (4, "rollback to v1")
    assert outcome.release.image == w.ctx.ledger.releases.get("shop", "production", 1).image
    # v4 runs v1's image and config: rolling back to v1 again has nothing to do.
    again = rollback(w.ctx, w.load().spec, "production", 1)
    assert (again.release.number, again.changed) == (4, False)
    assert w.out.of("done")[-1] == "v4 already runs the same image and config as v1"


def test_rollback_is_refused_when_nothing_earlier_served(w):
    with pytest.raises(UsageError) as none:
        rollback(w.ctx, w.load().spec, "production", None)
    assert none.value.message == "shop/production has no release in service, so there is nothing to roll back."
    deploy(w.ctx, w.load(), "production")
    with pytest.raises(UsageError) as first:
        rollback(w.ctx, w.load().spec, "production", None)
    assert first.value.message == ("shop/production has no earlier release that served, so there is nothing "
                                   "to roll back to.")
    # An aborted release never served: still nothing to roll back to.
    v2(w)
    w.engine.crash_on_start.add(2)
    with pytest.raises(RolloutError):
        deploy(w.ctx, w.load(), "production")
    with pytest.raises(UsageError, match="no earlier release that served"):
        rollback(w.ctx, w.load().spec, "production", None)
    with pytest.raises(UsageError) as unknown:
        rollback(w.ctx, w.load().spec, "production", 9)
    assert unknown.value.message == "shop/production has no release v9."


def test_rollback_refuses_a_release_whose_image_is_gone(w):
    first = deploy(w.ctx, w.load(), "production").release
    v2(w)
    deploy(w.ctx, w.load(), "production")
    w.engine.remove_image(first.image)
    with pytest.raises(KilnError) as err:
        rollback(w.ctx, w.load().spec, "production", None)
    assert err.value.message == f"the image of v1 ({first.image[:19]}) is no longer on this engine or in its registry."
    assert len(w.ctx.ledger.releases.of("shop", "production")) == 2


def test_rollback_onto_an_idle_kept_blue_green_set_only_moves_weights(w):
    use(w, "      strategy: blue-green\n      keep_old: 10m\n")
    deploy(w.ctx, w.load(), "production")
    old = web(w, 1)
    v2(w)
    deploy(w.ctx, w.load(), "production")
    new = web(w, 2)
    # The switch left v1's set running and idle.
    assert w.weights() == {**dict.fromkeys(old, 0), **dict.fromkeys(new, 100)}
    assert sorted(w.rollouts()[-1].data["kept"]) == old
    started = [n for verb, n in w.engine.log if verb == "start"]

    outcome = rollback(w.ctx, w.load().spec, "production", None)
    assert outcome.release.number == 3
    # No web instance started: v1's idle set counts as v3 (same image and config) and takes the
    # traffic. The worker has no traffic to weigh, so it was not kept: a v3 worker starts.
    assert [n for verb, n in w.engine.log if verb == "start"] == [*started, *worker(w, 3)]
    assert len(worker(w, 3)) == 1
    assert w.weights() == dict.fromkeys(old, 100)
    assert sorted(w.instances("production", "web")) == old
    assert w.serving() == dict.fromkeys(old, 1)  # their label still names the release that started them


# --- blue-green ---------------------------------------------------------------------------------


BLUE_GREEN_MANUAL = "      strategy: blue-green\n      promote: manual\n      smoke: [{path: /ready, body: ok}]\n"


def test_blue_green_manual_pauses_after_its_smoke_checks_and_promote_switches(w):
    use(w, BLUE_GREEN_MANUAL)
    deploy(w.ctx, w.load(), "production")  # a first deploy rolls: nothing to shield
    assert w.rollouts()[0].strategy == "rolling"
    old = web(w, 1)
    asked: list[tuple[str, str]] = []

    def answers(facts, path):
        asked.append((facts.label("release"), path))
        return 200, "ok"

    w.engine.answers = answers
    v2(w)
    outcome = deploy(w.ctx, w.load(), "production")

    assert (outcome.release.number, outcome.state, outcome.changed) == (2, "paused", True)
    new = web(w, 2)
    assert asked == [("2", "/ready")]  # on the preview port, which shows v2 only
    assert w.weights() == {**dict.fromkeys(old, 100), **dict.fromkeys(new, 0)}
    assert w.router().preview == set(new)
    assert w.serving() == dict.fromkeys(old, 1)
    paused = w.rollouts()[-1]
    assert (paused.state, paused.phase, paused.strategy) == ("paused", "promotion", "blue-green")
    assert paused.data["phases"] == ["start", "smoke", "promotion", "switch"]
    assert w.events()[-1] == (kinds.ROLLOUT_PAUSED, "rollout 2: v2 waits for promotion")
    assert w.ctx.ledger.releases.current("shop", "production").number == 1

    promoted = promote(w.ctx, "shop", "production")
    assert (promoted.release.number, promoted.state) == (2, "succeeded")
    assert w.serving() == dict.fromkeys(new, 2) and w.weights() == dict.fromkeys(new, 100)
    assert sorted(w.instances().values()) == [2, 2, 2] and w.router().preview == set()
    done = w.ctx.ledger.rollouts.get(paused.id)
    assert (done.state, done.phase) == ("succeeded", "done")
    assert w.events()[-1] == (kinds.ROLLOUT_SUCCEEDED, f"rollout {paused.id}: v2 serving")
    with pytest.raises(UsageError, match="no release of shop/production waits for promotion"):
        promote(w.ctx, "shop", "production")


def test_rollback_while_a_release_waits_for_promotion_drops_it(w):
    use(w, BLUE_GREEN_MANUAL)
    deploy(w.ctx, w.load(), "production")
    old = web(w, 1)
    v2(w)
    deploy(w.ctx, w.load(), "production")
    outcome = rollback(w.ctx, w.load().spec, "production", None)
    assert (outcome.release.number, outcome.changed) == (1, True)
    assert w.out.of("done")[-1] == "v1 keeps serving"
    assert w.instances() == {**dict.fromkeys(old, 1), **dict.fromkeys(worker(w, 1), 1)}
    assert w.weights() == dict.fromkeys(old, 100)
    dropped = w.rollouts()[-1]
    assert (dropped.state, dropped.reason) == ("aborted", "dropped: a new change came before its promotion")


def test_a_failing_smoke_check_aborts_blue_green_before_any_traffic_moves(w):
    use(w, "      strategy: blue-green\n      smoke: [{path: /ready, body: ok}]\n")
    deploy(w.ctx, w.load(), "production")
    old = web(w, 1)
    w.engine.answers = lambda facts, path: (200, "ok") if facts.label("release") == "1" else (503, "starting")
    v2(w)
    weights_set = len([e for e in w.router().log if e[0] == "weight"])
    with pytest.raises(RolloutError) as err:
        deploy(w.ctx, w.load(), "production")

    reason = "smoke check GET /ready on preview port 19080 failed: status 503, expected 200."
    assert err.value.message == f"the rollout to v2 was aborted: {reason}"
    assert len([e for e in w.router().log if e[0] == "weight"]) == weights_set  # no weight ever moved
    assert w.weights() == dict.fromkeys(old, 100) and sorted(w.instances().values()) == [1, 1, 1]
    rollout = w.rollouts()[-1]
    assert (rollout.state, rollout.reason, rollout.phase) == ("aborted", reason, "smoke")


def test_blue_green_needs_a_preview_port(w):
    use(w, "      strategy: blue-green\n")
    with pytest.raises(UsageError, match="blue-green needs a preview port for shop/staging"):
        deploy(w.ctx, w.load(), "staging")
    assert w.rollouts("staging") == []


def test_smoke_checks_without_a_preview_port_go_to_each_new_instance(w):
    use(w, "      strategy: canary\n      steps: []\n      smoke: [{path: /ready}]\n")
    deploy(w.ctx, w.load(), "staging")
    asked: list[str] = []
    w.engine.answers = lambda facts, path: (asked.append(facts.name), (200, "ok"))[1]
    v2(w)
    deploy(w.ctx, w.load(), "staging")
    assert asked == web(w, 2, "staging") and len(asked) == 1
    assert w.rollouts("staging")[-1].data["phases"] == ["start", "smoke", "switch"]


# --- canary -------------------------------------------------------------------------------------


def traffic(w: World, monkeypatch, canary_errors: int) -> None:
    """Requests flow while a canary step pauses (on a clock of its own, so no real time passes):
    each wait, every server answers 20 more, of which the new release's have `canary_errors` 5xx."""
    from kiln.rollout import driver

    router = w.router()

    class Clock:
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

        @classmethod
        def sleep(cls, seconds: float) -> None:
            cls.now += seconds
            for name in router.added:
                responses, errors, ms = router.counters.get(name, (0, 0, 10))
                bad = canary_errors if w.instances().get(name) == 2 else 0
                router.counters[name] = (responses + 20, errors + bad, 10)

    monkeypatch.setattr(driver, "time", Clock)


CANARY = ("      strategy: canary\n      steps: [{weight: 25, pause: 1s}]\n"
          "      analysis: {max_error_rate: 5, min_requests: 10}\n")


def test_a_canary_worse_than_its_baseline_is_aborted_and_the_baseline_keeps_serving(w, monkeypatch):
    use(w, CANARY)
    deploy(w.ctx, w.load(), "production")
    old = web(w, 1)
    traffic(w, monkeypatch, canary_errors=4)  # 4 of 20: 20% 5xx
    v2(w)
    with pytest.raises(RolloutError) as err:
        deploy(w.ctx, w.load(), "production")

    reason = ("canary analysis failed at 25%: canary error rate 20.0% (8 of 40 responses were 5xx) is above "
              "max_error_rate 5% (baseline 0.0%).")
    assert err.value.message == f"the rollout to v2 was aborted: {reason}"
    rollout = w.rollouts()[-1]
    assert (rollout.state, rollout.reason, rollout.phase) == ("aborted", reason, "shift:0")
    # 25% to the two new servers against the two old: 85 vs 256, then back to the old set only.
    assert ("weight", f"{old[0]}=256") in w.router().log
    assert w.weights() == dict.fromkeys(old, 100) and sorted(w.instances().values()) == [1, 1, 1]


def test_a_canary_as_good_as_its_baseline_goes_through_its_steps_and_switches(w, monkeypatch):
    use(w, CANARY)
    deploy(w.ctx, w.load(), "production")
    traffic(w, monkeypatch, canary_errors=0)
    v2(w)
    outcome = deploy(w.ctx, w.load(), "production")
    assert outcome.release.number == 2 and w.serving() == dict.fromkeys(web(w, 2), 2)
    rollout = w.rollouts()[-1]
    assert rollout.data["phases"] == ["start", "shift:0", "switch"]
    steps = w.ctx.ledger.rollouts.steps(rollout.id)
    [shift] = [s.detail for s in steps if s.target == "shift:0" and s.state == "done"]
    assert shift.startswith("25%: canary ") and ", 0.0% 5xx, 10 ms; baseline " in shift


# --- hooks --------------------------------------------------------------------------------------


def test_a_failing_before_traffic_hook_aborts_and_starts_no_instance(w):
    use(w, "      strategy: rolling\n      before_traffic: [migrate]\n")
    deploy(w.ctx, w.load(), "production")
    serving = w.serving()
    v2(w)
    w.engine.scripts[("migrate",)] = (3, ["relation users already exists"])
    with pytest.raises(RolloutError) as err:
        deploy(w.ctx, w.load(), "production")
    reason = "the before_traffic hook `migrate` exited with code 3. Its last output:\nrelation users already exists"
    assert err.value.message == f"the rollout to v2 was aborted: {reason}"
    assert w.serving() == serving and all(r == 1 for r, _ in w.containers().values())
    assert w.engine.containers({"kiln.role": "hook"}) == []  # the hook's container is removed
    assert (w.rollouts()[-1].state, w.rollouts()[-1].phase) == ("aborted", "before_traffic")


def test_hooks_run_once_each_in_a_container_of_the_new_release(w):
    use(w, "      strategy: rolling\n      before_traffic: [migrate]\n      after_traffic: [warm, up]\n")
    deploy(w.ctx, w.load(), "production")
    ran = [n for verb, n in w.engine.log if verb == "run"]
    assert [re.sub(r"-[0-9a-f]{6}$", "", n) for n in ran] == [
        "kiln-shop-production-before-traffic-v1", "kiln-shop-production-after-traffic-v1"]
    assert [w.engine.specs.get(n) for n in ran] == [None, None]
    assert w.rollouts()[-1].data["phases"] == ["before_traffic", "roll", "after_traffic"]


# --- locks --------------------------------------------------------------------------------------


def test_a_second_change_while_the_environment_is_locked_fails_at_once(w):
    deploy(w.ctx, w.load(), "production")
    w.ctx.ledger.locks.acquire("shop", "production", user="ann", host=socket.gethostname(), pid=os.getpid(),
                               reason="deploy", lease=30, holder_alive=lambda lock: True)
    v2(w)
    images = len(w.engine.image_store)
    for change in (lambda: deploy(w.ctx, w.load(), "production"),
                   lambda: rollback(w.ctx, w.load().spec, "production", None),
                   lambda: promote(w.ctx, "shop", "production")):
        with pytest.raises(LockHeld) as err:
            change()
        assert re.fullmatch(rf"shop/production is locked by ann@{socket.gethostname()} pid {os.getpid()} \(deploy\) "
                            r"since \d\d:\d\d:\d\d UTC, heartbeat 0s ago\.", err.value.message)
    assert len(w.engine.image_store) == images  # refused before the bake
    assert len(w.ctx.ledger.releases.of("shop", "production")) == 1
    # Another environment is not locked.
    assert deploy(w.ctx, w.load(), "staging").release.number == 1
