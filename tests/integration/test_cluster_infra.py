"""The cluster of scripts/cluster.sh itself, before any kiln test relies on it: three Ready nodes
with their labels, a registry that a worker pulls from by digest, and an overlay network on which
the tasks of a global dnsrr service reach each other across the nodes."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request

import pytest
from cluster import LOCAL, Cluster
from conftest import SESSION, TEST_LABEL

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def test_three_nodes_ready_with_their_labels(cluster: Cluster) -> None:
    listed = {n["Hostname"]: n for n in cluster.docker_json(LOCAL, "node", "ls")}
    assert set(listed) == {cluster.hostname(node) for node in cluster.nodes} == {
        cluster.hostname(LOCAL), "kiln-n1", "kiln-n2"}
    assert {h: (n["Status"], n["Availability"]) for h, n in listed.items()} == {
        h: ("Ready", "Active") for h in listed}
    assert listed[cluster.hostname(LOCAL)]["ManagerStatus"] == "Leader"

    for node in cluster.nodes:
        spec = json.loads(cluster.docker(LOCAL, "node", "inspect", listed[cluster.hostname(node)]["ID"]).stdout)[0]["Spec"]
        want = {"kiln.router": "true"} if node == LOCAL else {"pool": "web"}
        assert spec["Labels"] == want, (node, spec)
        swarm = json.loads(cluster.docker(node, "info", "--format", "{{json .Swarm}}").stdout)
        assert swarm["LocalNodeState"] == "active"
        assert swarm["ControlAvailable"] is (node == LOCAL)
        assert swarm["NodeAddr"] == {"local": "10.77.0.1", "kiln-n1": "10.77.0.11", "kiln-n2": "10.77.0.12"}[node]


def _registry(cluster: Cluster, method: str, path: str) -> int:
    context = ssl.create_default_context(cafile=str(cluster.ca))
    request = urllib.request.Request(f"https://{cluster.registry}{path}", method=method, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_image_pushed_to_the_registry_pulls_by_digest_on_n2(cluster: Cluster) -> None:
    if not cluster.probe_image:
        pytest.fail("scripts/cluster.sh up found no kiln-base image to push (scripts/test.sh builds one first: `kiln base build`)")
    repo = f"{cluster.registry}/kiln/test-{SESSION}"
    # An image no node has yet: the probe image plus a label (a new config, so a new digest).
    cid = cluster.docker(LOCAL, "create", "--label", TEST_LABEL, cluster.probe_image, "true").stdout.strip()
    try:
        cluster.docker(LOCAL, "commit", "--change", f"LABEL kiln.test.image={SESSION}", cid, f"{repo}:v1")
    finally:
        cluster.docker(LOCAL, "rm", "-f", cid)
    ref = None
    try:
        cluster.docker(LOCAL, "push", "-q", f"{repo}:v1")
        digests = json.loads(cluster.docker(LOCAL, "image", "inspect", "--format", "{{json .RepoDigests}}", f"{repo}:v1").stdout)
        ref = next(d for d in digests if d.startswith(f"{repo}@sha256:"))
        assert cluster.docker("kiln-n2", "image", "inspect", ref, check=False).returncode != 0

        cluster.docker("kiln-n2", "pull", "-q", ref)
        pulled = json.loads(cluster.docker("kiln-n2", "image", "inspect", ref).stdout)[0]
        assert pulled["Config"]["Labels"]["kiln.test.image"] == SESSION
        assert ref in pulled["RepoDigests"]
        ran = cluster.docker("kiln-n2", "run", "--rm", "--label", TEST_LABEL, ref, "sh", "-c", "echo ran on $0", "kiln-n2")
        assert ran.stdout.strip() == "ran on kiln-n2"

        digest = ref.split("@", 1)[1]
        assert _registry(cluster, "HEAD", f"/v2/kiln/test-{SESSION}/manifests/{digest}") == 200
        assert _registry(cluster, "DELETE", f"/v2/kiln/test-{SESSION}/manifests/{digest}") == 202  # delete is enabled
        assert _registry(cluster, "HEAD", f"/v2/kiln/test-{SESSION}/manifests/{digest}") == 404
    finally:
        for node, image in ((LOCAL, f"{repo}:v1"), (LOCAL, ref), ("kiln-n2", ref)):
            if image:
                cluster.docker(node, "rmi", "-f", image, check=False)


SERVE = ("mkdir -p /tmp/www && hostname >/tmp/www/id && cd /tmp/www && "
         "exec python3 -m http.server 8000 >/dev/null 2>&1")
# Run in each task: every address of tasks.<service> (one per task, dnsrr) and what it serves.
FETCH = """
import json, socket, sys, urllib.request
ips = sorted(socket.gethostbyname_ex("tasks." + sys.argv[1])[2])
print(json.dumps({ip: urllib.request.urlopen("http://%s:8000/id" % ip, timeout=5).read().decode().strip() for ip in ips}))
"""


def test_a_global_dnsrr_service_on_an_overlay_reaches_across_all_three_nodes(cluster: Cluster) -> None:
    if not cluster.probe_image:
        pytest.fail("scripts/cluster.sh up found no kiln-base image to run (scripts/test.sh builds one first: `kiln base build`)")
    name = f"kiln-cluster-t{SESSION}"
    labels = ["--label", TEST_LABEL, "--label", "kiln.cluster=test"]
    cluster.docker(LOCAL, "network", "create", "-d", "overlay", "--attachable", *labels, name)
    try:
        # Each task's hostname is its node's, and it serves that name at /id.
        cluster.docker(LOCAL, "service", "create", "--detach", "--quiet", "--name", name, *labels,
                       "--mode", "global", "--network", name, "--endpoint-mode", "dnsrr",
                       "--hostname", "{{.Node.Hostname}}", "--stop-grace-period", "1s",
                       cluster.probe_image, "sh", "-c", SERVE)
        hostnames = {cluster.hostname(node) for node in cluster.nodes}
        deadline = time.monotonic() + 120
        while True:
            tasks = cluster.docker_json(LOCAL, "service", "ps", "--filter", "desired-state=running", name)
            if sorted((t["Node"], t["CurrentState"].split()[0]) for t in tasks) == sorted((h, "Running") for h in hostnames):
                break
            assert time.monotonic() < deadline, tasks
            time.sleep(0.5)

        containers = {}
        for node in cluster.nodes:
            ids = cluster.docker(node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}").stdout.split()
            assert len(ids) == 1, (node, ids)
            containers[node] = ids[0]
        if cluster.docker(LOCAL, "exec", containers[LOCAL], "python3", "-V", check=False).returncode != 0:
            # No python3 in the image: only the addresses can be checked.
            ips = {cluster.docker(node, "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{name}").IPAddress}}}}', c).stdout.strip()
                   for node, c in containers.items()}
            assert len(ips) == 3, ips
            return

        seen: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + 60
        for node, container in containers.items():
            while True:  # until the DNS has all three tasks and each one's server answers
                out = cluster.docker(node, "exec", container, "python3", "-c", FETCH, name, check=False)
                if out.returncode == 0 and set(json.loads(out.stdout).values()) == hostnames:
                    seen[node] = json.loads(out.stdout)
                    break
                assert time.monotonic() < deadline, (node, out.stdout, out.stderr)
                time.sleep(0.5)
        # Every task resolved the same three overlay addresses and got each node's answer from them.
        assert len({json.dumps(s, sort_keys=True) for s in seen.values()}) == 1, seen
        assert len(next(iter(seen.values()))) == 3
    finally:
        cluster.docker(LOCAL, "service", "rm", name, check=False)
        deadline = time.monotonic() + 30
        while cluster.docker(LOCAL, "network", "rm", name, check=False).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
