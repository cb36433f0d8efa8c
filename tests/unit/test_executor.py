"""The rollout executor against the in-memory runtime and router: ordering, abort, healing."""

from __future__ import annotations

import pytest

from kiln.errors import RolloutError
from kiln.ledger.releases import Release
from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.providers.fake import FakeEngine, FakeRouter
from kiln.rollout.executor import Executor, ExecutorOptions, Target
from kiln.rollout.lock import Lease
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

SPEC = """\
app: shop
build: {steps: ["COPY . /app"]}
services:
  web:
    port: 8000
    replicas: 2
    healthcheck: {http: /health, interval: 50ms, deadline: 300ms}
  worker:
    command: [worker]
    replicas: 1
environments:
  prod: {port: 8080}
"""


@pytest.fixture
def world(tmp_path):
    cfg = resolve(parse_spec(SPEC), "prod")
    runtime = FakeEngine()
    runtime.ensure_network("kiln-shop-prod", {})
    for n in range(1, 5):
        runtime.add_image(f"sha256:{n}")
    router = FakeRouter(cfg, runtime)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")

    def release(image: str) -> Release:
        return ledger.releases.record(app="shop", env="prod", image=image, image_tag="t", inputs_hash="h",
                                     config=cfg.model_dump(mode="json"), config_digest=cfg.digest(),
                                     spec_digest="s", commit=None, dirty=False)

    def executor(known: tuple[Target, ...] = ()) -> Executor:
        rollout = ledger.rollouts.start("shop", "prod", None, 1, "rolling")
        return Executor(runtime, router, ledger, Output(quiet=True),
                        ExecutorOptions(rollout_id=rollout.id, known=known, probe=lambda svc, c: runtime.healthy(c.name)))

    return runtime, router, ledger, release, executor


def names(runtime: FakeEngine, release: int) -> set[str]:
    return {n for n, s in runtime.specs.items() if s.labels["kiln.release"] == str(release)}


def test_first_deploy_starts_routes_and_records_every_action(world):
    runtime, router, ledger, release, executor = world
    ex = executor()
    ex.converge(Target.of(release("sha256:1")))
    web = {n for n in names(runtime, 1) if "-web-" in n}
    assert len(web) == 2 and len(names(runtime, 1)) == 3
    assert set(router.added) == web  # the worker has no port and is never routed
    steps = ledger.rollouts.steps(ex.rollout_id)
    started = [s.target for s in steps if s.action == "Start" and s.state == "started"]
    assert set(started) == names(runtime, 1)
    assert {s.target for s in steps if s.action == "Route" and s.state == "done"} == web


def test_a_server_left_in_maintenance_by_a_killed_kiln_is_added_again(world):
    runtime, router, ledger, release, executor = world
    target = Target.of(release("sha256:1"))
    executor().converge(target)
    half = sorted(router.added)[0]
    router.maint.add(half)  # `add server` ran, `enable server` did not
    executor().converge(target)
    assert router.servers()[half].serving
    assert router.log[-2:] == [("remove", half), ("add", half)]


def test_old_instances_leave_the_router_only_after_new_ones_serve(world):
    runtime, router, _, release, executor = world
    executor().converge(Target.of(release("sha256:1")))
    old = names(runtime, 1)
    router.log.clear()
    executor().converge(Target.of(release("sha256:2")))
    new_web = {n for n in names(runtime, 2) if "-web-" in n}
    first_removal = next(i for i, (verb, _) in enumerate(router.log) if verb == "remove")
    assert {name for verb, name in router.log[:first_removal] if verb == "add"} == new_web
    assert not names(runtime, 1) and all(n not in runtime.specs for n in old)
    # every removed container was stopped first (SIGTERM, grace) and was out of the router by then
    for name in old:
        assert runtime.log.index(("stop", name)) < runtime.log.index(("remove", name))


def test_a_release_that_exits_aborts_and_the_previous_one_keeps_serving(world):
    runtime, router, _, release, executor = world
    v1 = release("sha256:1")
    executor().converge(Target.of(v1))
    serving = set(router.added)
    v1_instances = names(runtime, 1)
    v2 = release("sha256:2")
    runtime.crash_on_start.add(2)
    ex = executor(known=(Target.of(v1),))
    with pytest.raises(RolloutError, match="exited"):
        ex.converge(Target.of(v2))
    assert set(router.added) == serving  # the router was never touched
    ex.converge(Target.of(v1), strict=False)  # the abort path
    assert not names(runtime, 2)
    assert set(router.added) == serving and names(runtime, 1) == v1_instances  # the old set was not touched


def test_a_release_that_never_becomes_healthy_aborts_at_its_deadline(world):
    runtime, router, _, release, executor = world
    executor().converge(Target.of(release("sha256:1")))
    serving = set(router.added)
    original_start = runtime.start

    def start_unhealthy(spec):
        runtime.unhealthy.add(spec.name)
        return original_start(spec)

    runtime.start = start_unhealthy  # type: ignore[method-assign]
    with pytest.raises(RolloutError, match="did not pass its healthcheck"):
        executor().converge(Target.of(release("sha256:2")))
    assert set(router.added) == serving


def test_an_instance_that_died_earlier_is_replaced_not_fatal(world):
    runtime, router, _, release, executor = world
    v1 = release("sha256:1")
    executor().converge(Target.of(v1))
    victim = sorted(router.added)[0]
    runtime.kill(victim)
    ex = executor()
    assert not ex.converged(Target.of(v1))
    ex.converge(Target.of(v1))
    assert victim not in runtime.specs and victim not in router.added
    assert len([n for n in router.added if runtime.healthy(n)]) == 2
    assert ex.converged(Target.of(v1))


def test_a_lost_lock_stops_the_executor_before_it_acts(world):
    import threading

    from kiln.errors import LockLost

    runtime, router, ledger, release, _ = world
    lost = threading.Event()
    lost.set()
    rollout = ledger.rollouts.start("shop", "prod", None, 1, "rolling")
    ex = Executor(runtime, router, ledger, Output(quiet=True), ExecutorOptions(rollout_id=rollout.id, lease=Lease(lost)))
    with pytest.raises(LockLost, match="lost the environment's lock"):
        ex.converge(Target.of(release("sha256:1")))
    assert not runtime.specs and not router.added  # nothing was started or routed
