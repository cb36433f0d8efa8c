"""The Swarm provider's pure parts: what a service of one task is created with, how a service and
its tasks read as an instance, kiln's GET from inside the router, and the spec keys of a cluster."""

from __future__ import annotations

import pytest

from kiln.errors import SpecError
from kiln.providers.base import ContainerSpec, EngineEvent, Limits, short_image
from kiln.providers.swarm import (
    as_instance,
    current_task,
    http_argv,
    node_facts,
    parse_http,
    service_args,
    service_facts,
    tcp_argv,
)
from kiln.spec.hardening import Hardening
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

SPEC = ContainerSpec(
    name="kiln-shop-prod-web-v3-abc123", image="10.77.0.1:5000/kiln/shop@sha256:" + "a" * 64,
    network="kiln-shop-prod", labels={"kiln.app": "shop", "kiln.env": "prod", "kiln.role": "instance"},
    command=("python3", "app.py"), environment={"PORT": "8000"},
    hardening=Hardening(user="65534", writable=("/tmp",)),
    stop_grace_period=7.5, limits=Limits(memory=256 * 1024**2, cpus=0.5, pids=128),
    constraints=("node.labels.pool == web",))


def test_an_instance_is_a_service_of_one_task_that_swarm_never_restarts():
    args = service_args(SPEC, {"kiln.test": "unit"}, {"PORT": "8000", "SECRET": "s3"})
    task = args["task_template"]
    container = task["ContainerSpec"]
    assert args["name"] == SPEC.name
    assert args["mode"] == {"replicated": {"Replicas": 1}}
    assert args["endpoint_spec"]["Mode"] == "dnsrr"  # kiln's router balances; no mesh, no VIP
    assert task["RestartPolicy"]["Condition"] == "none"  # kiln replaces instances; Swarm does not restart them
    assert task["Placement"]["Constraints"] == ["node.labels.pool == web"]
    assert [n["Target"] for n in task["Networks"]] == ["kiln-shop-prod"]
    assert task["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 1024**2}
    assert container["Image"] == SPEC.image  # by digest: every node runs the same bytes
    assert container["Labels"] == {**SPEC.labels, "kiln.test": "unit"} == args["labels"]
    assert sorted(container["Env"]) == ["PORT=8000", "SECRET=s3"]
    assert container["ReadOnly"] is True and container["Init"] is True
    assert container["CapabilityDrop"] == ["ALL"] and "CapabilityAdd" not in container
    assert container["Mounts"] == [{"Target": "/tmp", "Source": "", "Type": "tmpfs", "ReadOnly": False,
                                    "TmpfsOptions": {"SizeBytes": 64 * 1024**2}}]
    assert container["StopGracePeriod"] == 7_500_000_000 and container["User"] == "65534"


def _service(healthcheck: bool = False) -> dict:
    cspec = {"Image": SPEC.image, **({"Healthcheck": {"Test": ["CMD", "true"]}} if healthcheck else {})}
    return {"ID": "svc1", "Spec": {"Name": SPEC.name, "Labels": SPEC.labels,
                                   "TaskTemplate": {"ContainerSpec": cspec, "Networks": [{"Target": "net1"}]}}}


def _task(state: str, desired: str = "running", node: str = "n1", index: int = 1, code: int | None = None) -> dict:
    status: dict = {"State": state}
    if code is not None:
        status["ContainerStatus"] = {"ExitCode": code}
    return {"ID": f"t{index}", "ServiceID": "svc1", "NodeID": node, "DesiredState": desired, "Version": {"Index": index},
            "Status": status, "NetworksAttachments": [
                {"Network": {"ID": "ingress1", "Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.9/24"]},
                {"Network": {"ID": "net1", "Spec": {"Name": "kiln-shop-prod"}}, "Addresses": ["10.0.1.5/24"]}]}


NODES = {"n1": ("worker-1", "ready"), "n2": ("worker-2", "down")}


def test_a_service_reads_as_an_instance_with_its_task_address_and_node():
    facts = service_facts(_service(), [_task("running")], NODES)
    assert (facts.name, facts.state, facts.ip, facts.node, facts.id) == (SPEC.name, "running", "10.0.1.5", "worker-1", "t1")
    assert facts.running and facts.image == SPEC.image and facts.label("app") == "shop"
    assert facts.health is None and facts.exit_code is None


@pytest.mark.parametrize(("task", "state", "code"), [
    (_task("failed", "shutdown", code=3), "failed", 3),
    (_task("running", "shutdown"), "exited", None),  # Swarm is shutting it down
    (_task("running", node="n2"), "lost", None),  # its node is down: the manager cannot vouch for it
    (_task("preparing"), "preparing", None),
    (_task("assigned", "shutdown"), "shutdown", None),  # placed on a node that went down before it started
    (_task("rejected", "shutdown"), "rejected", None),
])
def test_a_task_that_is_not_running_makes_the_instance_not_running(task, state, code):
    facts = service_facts(_service(), [task], NODES)
    assert (facts.state, facts.running, facts.exit_code) == (state, False, code)


def test_the_current_task_is_the_one_swarm_wants_running_else_the_newest():
    old, new = _task("failed", "shutdown", index=5), _task("running", index=3)
    assert current_task([old, new]) is new
    assert current_task([_task("failed", "shutdown", index=2), old]) is old
    assert current_task([]) is None
    assert service_facts(_service(), [], NODES).state == "created"


def test_a_command_healthcheck_passed_once_swarm_reports_the_task_running():
    assert service_facts(_service(healthcheck=True), [_task("running")], NODES).health == "healthy"
    assert service_facts(_service(healthcheck=True), [_task("starting")], NODES).health is None


def test_kilns_get_from_inside_the_router_passes_values_as_arguments_never_as_script():
    argv = http_argv("10.0.1.5", 8000, "/health?x=$(reboot)", 2.0)
    assert argv[:5] == ("timeout", "2", "bash", "-c", argv[4])
    assert "$(reboot)" not in argv[4] and argv[5:] == ("kiln", "10.0.1.5", "8000", "/health?x=$(reboot)")
    assert tcp_argv("10.0.1.5", 8000, 0.5) == ("timeout", "0.5", "bash", "-c", 'exec 3<>"/dev/tcp/$1/$2"',
                                               "kiln", "10.0.1.5", "8000")


def test_an_http_answer_is_parsed_and_anything_else_is_no_answer():
    assert parse_http(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok\n") == (200, "ok\n")
    assert parse_http(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") == (503, "")
    for raw in (b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 abc\r\n\r\n"):
        with pytest.raises(OSError):
            parse_http(raw)


def test_a_task_containers_event_carries_its_instances_name():
    ev = EngineEvent("exec_start", "sh", "kiln-x.1.abc", {"com.docker.swarm.service.name": "kiln-x"}, 1.0)
    assert as_instance(ev).name == "kiln-x"
    plain = EngineEvent("die", "", "kiln-shop-prod-router", {}, 1.0)
    assert as_instance(plain) is plain


def test_node_facts():
    raw = {"ID": "abc", "Spec": {"Role": "worker", "Availability": "pause", "Labels": {"pool": "web"}},
           "Description": {"Hostname": "kiln-n1"}, "Status": {"State": "ready", "Addr": "10.77.0.11"}}
    n = node_facts(raw)
    assert (n.hostname, n.role, n.availability, n.state, n.address, n.labels, n.leader) == \
        ("kiln-n1", "worker", "pause", "ready", "10.77.0.11", {"pool": "web"}, False)


def test_short_image_keeps_the_repository_of_a_pushed_image():
    assert short_image("sha256:" + "b" * 64) == "sha256:bbbbbbbbbbbb"
    assert short_image("10.77.0.1:5000/kiln/shop@sha256:" + "c" * 64) == "10.77.0.1:5000/kiln/shop@sha256:cccccccccccc"


CLUSTER = """\
app: shop
{registry}
build: {{steps: ["COPY app.py /app/app.py"]}}
services:
  web: {{command: [python3, app.py], port: 8000}}
environments:
  production:
    port: 8080
    engine: {engine}
    {placement}
"""


def _spec(registry: str = "registry: 10.77.0.1:5000/kiln", engine: str = "swarm", placement: str = ""):
    return parse_spec(CLUSTER.format(registry=registry, engine=engine, placement=placement), "kiln.yaml")


def test_a_swarm_environment_resolves_with_its_registry_and_constraints():
    cfg = resolve(_spec(placement='placement: {constraints: ["node.labels.pool == web"]}'), "production")
    assert (cfg.engine, cfg.registry, cfg.repository, cfg.constraints) == \
        ("swarm", "10.77.0.1:5000/kiln", "10.77.0.1:5000/kiln/shop", ("node.labels.pool == web",))
    docker = resolve(_spec(engine="docker"), "production")
    assert (docker.registry, docker.repository) == (None, None)  # one host: images never leave it
    assert docker.digest() == resolve(_spec(registry="", engine="docker"), "production").digest()


@pytest.mark.parametrize(("kwargs", "where", "what"), [
    ({"registry": ""}, "environments.production.engine", "needs a top-level 'registry"),
    ({"engine": "docker", "placement": "placement: {constraints: []}"}, "environments.production.placement",
     "set 'engine: swarm'"),
    ({"registry": "registry: https://example.org/kiln"}, "registry", "HOST[:PORT]/PATH"),
    ({"registry": "registry: 10.77.0.1:5000"}, "registry", "HOST[:PORT]/PATH"),  # a repository path is needed
    ({"placement": 'placement: {constraints: ["rm -rf /"]}'}, "constraints", "placement constraint"),
    ({"engine": "kubernetes"}, "environments.production.engine", "swarm"),
])
def test_bad_cluster_keys_are_refused_with_the_key_and_what_to_do(kwargs, where, what):
    with pytest.raises(SpecError) as err:
        _spec(**kwargs)
    assert where in str(err.value) and what in str(err.value)
