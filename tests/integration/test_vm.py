"""engine: qemu against a real dockerd, HAProxy and QEMU (TCG here: /dev/kvm fails on this
machine), under wrk load: examples/hello baked as a VM image, two VM replicas deployed,
redeployed and rolled back with zero failed requests; a VM whose QEMU is killed -9 is replaced
by the agent with zero failed requests; the exported qcow2 boots in a fresh QEMU with a NoCloud
seed (cloud-init) and serves; a release that never turns healthy is aborted with the VM's serial
console in the error while the old one serves.

One app for the module: a VM image takes minutes to bake the first time (two debootstraps),
and each boot ~30-60 s under TCG. The tests run in the order written and each checks the state
it starts from. Last, the engine contract runs against the QEMU provider on the same VM image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import SESSION, App, Wrk, _remove_images, _remove_labelled, free_port, make_app
from contract.engine import EngineContract
from test_agent import AgentProc, instances, wait_for
from test_engine_contract import shell_script

from kiln.bake.vm import VmStore
from kiln.providers.kind import EngineKind
from kiln.providers.qemu import QemuProvider
from kiln.providers.qemu_kind import QEMU
from kiln.spec.loader import load_spec

ENV = "vmtest"


@pytest.fixture(scope="module")
def vm_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    # Its own client, not the session's `engine` fixture: TestQemuEngine's `engine` (the contract's)
    # would stand for it there.
    engine = docker.from_env()
    made = make_app(tmp_path_factory.mktemp("vm"))
    made.ports[ENV] = free_port()
    made.spec.write_text(made.spec.read_text().replace("port: 8090", f"port: {made.ports[ENV]}"))
    started = time.monotonic()
    baked = json.loads(made.kiln("bake", "--vm", "--json", timeout=900).stdout)
    print(f"\nkiln bake --vm: {time.monotonic() - started:.1f}s (built={baked['built']})")
    yield made
    _remove_labelled(engine, {"kiln.test": SESSION, "kiln.app": made.name})
    _remove_images(engine, made.name)


def body(app: App) -> str:
    return subprocess.run(["curl", "-s", "-m", "10", app.url(ENV)], capture_output=True, text=True).stdout


def deploy_under_load(app: App, *args: str) -> tuple[subprocess.CompletedProcess, object]:
    load = Wrk(app.url(ENV) + "/", 300, connections=4)
    try:
        started = time.monotonic()
        done = app.kiln(*args, "-e", ENV, timeout=600)
        took = time.monotonic() - started
    finally:
        load.proc.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
    result = load.result()
    print(f"kiln {' '.join(args)}: {took:.1f}s under load; {result.requests} requests, "
          f"{result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    return done, result


def test_deploy_redeploy_and_rollback_two_vms_under_load(vm_app: App, engine: docker.DockerClient) -> None:
    app = vm_app
    started = time.monotonic()
    app.kiln("deploy", "-e", ENV, timeout=600)
    print(f"first deploy (2 VMs booted): {time.monotonic() - started:.1f}s")
    first = app.serving(ENV)
    assert first["image"].startswith(f"kiln-vm/{app.name}@sha256:")
    assert f"from v{first['number']} (kiln-{app.name}-{ENV}-web-" in body(app)  # its seed's environment
    vms = instances(engine, app, ENV)
    assert len(vms) == 2
    for vm in vms:  # each a QEMU in its hardened launcher container, the release's image mounted read-only
        host = vm.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and "no-new-privileges:true" in host["SecurityOpt"]
        assert any(m["Destination"] == "/vm" and not m["RW"] for m in vm.attrs["Mounts"])
        assert vm.attrs["Config"]["Cmd"][4] == "qemu-system-x86_64"

    app.set_message("the second VM release")
    _, load = deploy_under_load(app, "deploy")
    second = app.serving(ENV)
    assert second["number"] > first["number"] and second["image"] != first["image"]
    assert "the second VM release" in body(app)
    assert load.requests > 0 and load.non_2xx == 0 and load.socket_errors == 0, load.text

    _, load = deploy_under_load(app, "rollback")
    back = app.serving(ENV)
    assert back["image"] == first["image"]
    assert "the second VM release" not in body(app) and "hello, world" in body(app)
    assert load.requests > 0 and load.non_2xx == 0 and load.socket_errors == 0, load.text
    assert len(instances(engine, app, ENV)) == 2


def _qemu_pid(container: docker.models.containers.Container) -> int:
    init = container.attrs["State"]["Pid"]  # docker-init; QEMU is its child
    out = subprocess.run(["pgrep", "-P", str(init), "-f", "qemu-system-x86_64"], capture_output=True, text=True).stdout
    return int(out.split()[0])


def test_agent_replaces_a_vm_whose_qemu_is_killed(vm_app: App, engine: docker.DockerClient, tmp_path: Path) -> None:
    app = vm_app
    if app.kiln_json("status", "-e", ENV)["release"] is None:
        app.kiln("deploy", "-e", ENV, timeout=600)
    app.edit_spec(lambda data: data["environments"][ENV].update({"agent": {"interval": "1s"}}))
    agent = AgentProc(app, tmp_path / "agent.log")
    try:
        wait_for("the agent's lease", lambda: app.kiln_json("status", "-e", ENV)["agent"]["leader"], timeout=60)
        before = {c.name for c in instances(engine, app, ENV)}
        assert len(before) == 2
        victim = instances(engine, app, ENV)[0]
        load = Wrk(app.url(ENV) + "/", 300, connections=4)
        try:
            time.sleep(3)
            killed = time.monotonic()
            os.kill(_qemu_pid(victim), signal.SIGKILL)
            healthy = wait_for("a replacement VM, healthy",
                               lambda: [i for i in app.kiln_json("status", "-e", ENV)["instances"]
                                        if i["id"] not in before and i["health"] == "healthy"], timeout=300, every=1)
            took = time.monotonic() - killed
            time.sleep(2)
        finally:
            load.proc.send_signal(signal.SIGINT)
        result = load.result()
        print(f"VM killed -9: a replacement healthy after {took:.1f}s; {result.requests} requests, "
              f"{result.non_2xx} non-2xx, {result.socket_errors} socket errors")
        assert healthy and victim.name not in {c.name for c in instances(engine, app, ENV)}
        assert result.requests > 0 and result.non_2xx == 0 and result.socket_errors == 0, result.text
        assert f"{victim.name} failed" in agent.output(), agent.output()
    finally:
        agent.proc.send_signal(signal.SIGTERM)  # it ends the pass it is in: a VM's start takes longer than a container's
        agent.proc.wait(timeout=240)


def test_exported_qcow2_boots_in_a_fresh_qemu_with_a_nocloud_seed(vm_app: App, tmp_path: Path) -> None:
    app = vm_app
    serving = app.serving(ENV)
    if serving is None:
        app.kiln("deploy", "-e", ENV, timeout=600)
        serving = app.serving(ENV)
    disk = tmp_path / "exported.qcow2"
    app.kiln("image", "export", str(serving["number"]), "-e", ENV, "--format", "qcow2", "-o", str(disk), timeout=300)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info  # stands alone
    # A NoCloud seed as a cloud would give it: cloud-init's write_files puts the environment in /etc/kiln.
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "meta-data").write_text("instance-id: exported-1\nlocal-hostname: exported\n")
    (seed / "user-data").write_text('#cloud-config\nwrite_files:\n  - path: /etc/kiln/web.env\n    permissions: "0600"\n'
                                    '    content: |\n      GREETING="hi from cloud-init"\n      KILN_RELEASE="exported"\n')
    seed_img = tmp_path / "seed.img"
    subprocess.run(["mkfs.vfat", "-n", "CIDATA", "-C", str(seed_img), "2048"], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(seed_img), str(seed / "meta-data"), str(seed / "user-data"), "::"], check=True)
    port = free_port()
    console = tmp_path / "console.log"
    # No -kernel: the disk boots by itself (syslinux), on a copy (snapshot=on leaves the file as exported).
    vm = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg,tb-size=64", "-m", "512M", "-nodefaults", "-display", "none",
                           "-serial", f"file:{console}", "-no-reboot",
                           "-drive", f"file={disk},if=virtio,format=qcow2,snapshot=on",
                           "-drive", f"file={seed_img},if=virtio,format=raw,readonly=on",
                           "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8000", "-device", "virtio-net-pci,netdev=n0"])
    try:
        started = time.monotonic()

        def answer() -> str:
            got = subprocess.run(["curl", "-s", "-m", "2", f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
            assert vm.poll() is None, f"QEMU exited {vm.returncode}: {console.read_text()[-2000:]}"
            return got
        text = wait_for("the exported image to serve", answer, timeout=300, every=2)
        print(f"exported qcow2 served after {time.monotonic() - started:.1f}s (syslinux, cloud-init)")
        assert "hi from cloud-init from vexported" in text
        assert "cloud-init" in console.read_text()
    finally:
        vm.kill()
        vm.wait(timeout=30)


def test_a_vm_release_that_never_turns_healthy_is_aborted_with_its_console(vm_app: App) -> None:
    app = vm_app
    if app.serving(ENV) is None:
        app.kiln("deploy", "-e", ENV, timeout=600)
    before = app.serving(ENV)
    app.set_code("class Handler(BaseHTTPRequestHandler):",
                 'raise SystemExit("this release cannot start")\n\n\nclass Handler(BaseHTTPRequestHandler):')
    try:
        failed = app.kiln("deploy", "-e", ENV, check=False, timeout=900)
    finally:
        app.restore_code()
    assert failed.returncode != 0
    # The service's exit powered the VM off, and the error shows the end of its serial console.
    assert "this release cannot start" in failed.stderr or "Power" in failed.stderr, failed.stderr
    assert app.serving(ENV)["number"] == before["number"]
    assert "hello, world" in body(app)


class TestQemuEngine(EngineContract):
    """The engine contract (tests/contract/engine.py) held against the QEMU provider: each instance
    a VM of examples/hello's VM image, booted in its launcher container (TCG here)."""

    @pytest.fixture
    def engine(self, engine: docker.DockerClient, vm_app: App) -> QemuProvider:
        return QemuProvider({"kiln.test": SESSION}, secrets=None, home=vm_app.home)

    @pytest.fixture
    def kind(self) -> EngineKind:
        return QEMU

    @pytest.fixture
    def image(self, vm_app: App) -> str:
        return VmStore(vm_app.home).all()[0].ref  # what the module's bake made (or a later deploy)

    @pytest.fixture
    def grace(self, vm_app: App) -> float:
        return QEMU.boot_grace(load_spec(vm_app.spec).spec)

    @pytest.fixture
    def script(self):
        return shell_script
