"""The agent's pure rules: which instances failed, the meltdown guard, and drift."""

from __future__ import annotations

import pytest

from kiln.agent.drift import changed_files, exec_detail, taints
from kiln.agent.guard import GONE, UNROUTED, halted, judge, limit
from kiln.providers.base import ContainerDetails, ContainerFacts, ContainerSpec, Limits
from kiln.rollout.plan import FULL, Instance
from kiln.spec.hardening import Hardening
from kiln.spec.models import Meltdown

WEB = "web"


def serving(name: str) -> Instance:
    return Instance(name, WEB, 1, running=True, ready=True, in_router=True, weight=FULL)


# --- judge --------------------------------------------------------------------------------------


def test_dead_and_down_in_the_router_fail_at_once():
    facts = [serving("a"), Instance("b", WEB, 1, running=False, ready=False),
             Instance("c", WEB, 1, running=True, ready=False, in_router=True, weight=FULL),
             Instance("ghost", WEB, -1, running=False, ready=False, in_router=True)]
    health = judge(facts, WEB, frozenset())
    assert health.failed == {"b": "exited", "c": UNROUTED, "ghost": GONE}
    assert health.dead == {"b", "ghost"}


def test_a_routed_instance_not_yet_in_the_router_has_not_failed():
    assert judge([Instance("n", WEB, 1, running=True, ready=False)], WEB, frozenset()).failed == {}


def test_an_unrouted_service_fails_only_on_its_second_failed_check_in_a_row():
    worker = Instance("w", "worker", 1, running=True, ready=False)
    first = judge([worker], WEB, frozenset())
    assert first.failed == {} and first.suspects == {"w"}
    second = judge([worker], WEB, first.suspects)
    assert "w" in second.failed and second.suspects == frozenset()
    recovered = judge([Instance("w", "worker", 1, running=True, ready=True)], WEB, first.suspects)
    assert recovered.failed == {} and recovered.suspects == frozenset()


# --- meltdown guard --------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_failures", "instances", "allowed"), [
    ("50%", 2, 1), ("50%", 4, 2), ("50%", 1, 1), ("25%", 10, 2), (3, 2, 3), (0, 5, 1), ("100%", 4, 4),
])
def test_limit_is_a_count_or_a_share_and_at_least_one(max_failures, instances, allowed):
    assert limit(Meltdown(max_failures=max_failures), instances) == allowed


def test_halted_once_failures_exceed_the_limit():
    policy = Meltdown(max_failures="50%")
    assert not halted(1, policy, 2)
    assert halted(2, policy, 2)


# --- drift ------------------------------------------------------------------------------------------


SPEC = ContainerSpec(name="i", image="sha256:aaa", network="n", labels={"kiln.release": "1", "kiln.config": "c"},
                     environment={"PORT": "8000", "TOKEN": "s3cret"}, hardening=Hardening(user="65534", writable=("/tmp",)))
FACTS = ContainerFacts(id="x", name="i", image="sha256:aaa", labels={"kiln.release": "1", "kiln.config": "c",
                                                                      "kiln.test": "extra"},
                       state="running", health=None, ip="10.0.0.2", exit_code=None)
DETAILS = ContainerDetails(env={"PATH": "/usr/bin", "PORT": "8000", "TOKEN": "s3cret"}, read_only=True,
                           cap_drop=("ALL",), cap_add=(), security_opt=("no-new-privileges:true",), user="65534",
                           privileged=False, tmpfs=("/tmp",), mounts=(), limits=Limits())
IMAGE_ENV = {"PATH": "/usr/bin"}


def test_an_instance_as_created_has_no_taint():
    assert taints(SPEC, IMAGE_ENV, FACTS, DETAILS, ["C /usr", "A /usr/sbin/docker-init"], []) == []


def test_each_kind_of_drift_is_named():
    from dataclasses import replace

    facts = replace(FACTS, image="sha256:bbb", labels={**FACTS.labels, "kiln.config": "other"})
    details = replace(DETAILS, env={**DETAILS.env, "TOKEN": "stolen", "EXTRA": "1"}, cap_add=("NET_ADMIN",),
                      mounts=("/var/run/docker.sock:/var/run/docker.sock",), read_only=False)
    reasons = taints(SPEC, IMAGE_ENV, facts, details, ["C /app", "A /app/evil"], ["sh -c id at 10:00:00 UTC"])
    text = "\n".join(reasons)
    assert "runs image sha256:bbb" in text
    assert "label kiln.config is 'other'" in text
    assert "environment differs from its release: EXTRA, TOKEN" in text
    assert "s3cret" not in text and "stolen" not in text  # names, never values
    assert "capabilities added: NET_ADMIN" in text
    assert "docker.sock" in text
    assert "read-only root filesystem is False" in text
    assert "filesystem changed: A /app/evil" in text
    assert "docker exec: sh -c id" in text


def test_limits_other_than_the_release_taint():
    from dataclasses import replace

    # an instance started by a kiln without limits (the engine reports 0 for none), then one whose
    # limits were raised behind kiln's back (`docker update --memory 2g --cpus 4 --pids-limit 0`)
    unlimited = replace(DETAILS, limits=Limits(memory=0, cpus=0.0, pids=0))
    assert taints(SPEC, IMAGE_ENV, FACTS, unlimited, [], []) == [
        "memory limit is none, its release says 512M",
        "CPU limit is none, its release says 1",
        "pids limit is none, its release says 512",
    ]
    raised = replace(DETAILS, limits=Limits(memory=2 * 1024**3, cpus=4.0, pids=512))
    assert taints(SPEC, IMAGE_ENV, FACTS, raised, [], []) == [
        "memory limit is 2G, its release says 512M",
        "CPU limit is 4, its release says 1",
    ]
    assert taints(SPEC, IMAGE_ENV, FACTS, replace(DETAILS, limits=Limits(cpus=1.0 + 1e-12)), [], []) == []


def test_changed_files_skip_writable_paths_engine_files_and_parent_directories():
    changes = ["C /app", "A /app/x", "C /tmp", "A /tmp/y", "C /etc/passwd", "C /usr", "C /usr/sbin",
               "A /usr/sbin/docker-init", "D /opt/gone"]
    assert changed_files(changes, ("/tmp",)) == ["A /app/x", "C /etc/passwd", "D /opt/gone"]


def test_many_changed_files_are_counted_not_listed():
    reasons = taints(SPEC, IMAGE_ENV, FACTS, DETAILS, [f"A /f{i}" for i in range(8)], [])
    assert reasons == ["filesystem changed: A /f0, A /f1, A /f2, A /f3, A /f4 (+3 more)"]


def test_the_engine_names_a_command_healthcheck_exec_by_its_argv():
    assert exec_detail(("curl", "-f", "localhost")) == "curl -f localhost"
    assert exec_detail(None) is None
