"""VM images and the QEMU engine, the pure parts: the recipe (units, seed environment, disk
layout, inputs hash), the launcher's QEMU command line, the spec's rules for `engine: qemu`,
and the store of VM images by inputs and digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.bake.vm import VmStore, is_vm_ref, vm_ref
from kiln.bake.vm_recipe import (
    ENGINE_CMDLINE,
    env_file,
    guest_files,
    parse_env_file,
    partition_table,
    root_bytes,
    service_unit,
    vm_base,
    vm_inputs_hash,
)
from kiln.providers.base import ContainerSpec, Limits
from kiln.providers.qemu import (
    IMAGE_DIR,
    IMAGE_LABEL,
    QEMU_OVERHEAD,
    VM_RUN,
    launcher_spec,
    qemu_argv,
)
from kiln.spec.checks import spec_problems
from kiln.spec.hardening import Hardening
from kiln.spec.models import Base, Service, Spec, VmBuild
from kiln.spec.resolve import resolve

SPEC = {
    "app": "hello",
    "build": {"steps": ["COPY app.py /app/app.py"], "base": {"packages": ["python3"]}},
    "services": {"web": {"command": ["python3", "/app/app.py"], "port": 8000, "user": "65534",
                         "healthcheck": {"http": "/health", "deadline": "30s"}}},
    "environments": {"production": {"port": 8080}, "vmtest": {"port": 8090, "engine": "qemu"}},
}


def spec(**changes: object) -> Spec:
    data = json.loads(json.dumps(SPEC))
    for path, value in changes.items():
        node = data
        *head, last = path.split("__")
        for key in head:
            node = node[key]
        node[last] = value
    return Spec.model_validate(data)


def test_env_file_round_trips_quotes_dollars_and_backslashes() -> None:
    env = {"PLAIN": "x", "QUOTED": 'say "hi"', "DOLLAR": "$HOME and ${X}", "BACK": "a\\b", "TICK": "`id`", "EMPTY": ""}
    text = env_file(env)
    assert parse_env_file(text) == env
    assert 'DOLLAR="\\$HOME and \\${X}"' in text.splitlines()


def test_env_file_refuses_a_value_on_two_lines() -> None:
    with pytest.raises(ValueError, match="spans lines"):
        env_file({"KEY": "one\ntwo"})


def test_service_unit_is_hardened_like_the_container() -> None:
    unit = service_unit("web", Service(command=("python3", "/app/app.py"), user="65534", writable=("/tmp", "/cache")),
                        ("python3", "/app/app.py"))
    lines = unit.splitlines()
    for line in ("User=65534", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "ProtectSystem=strict",
                 "PrivateTmp=yes", "TemporaryFileSystem=/cache", "FailureAction=poweroff-force",
                 'ExecStart="python3" "/app/app.py"', "ConditionPathExists=|/run/kiln/env/web.env"):
        assert line in lines, line


def test_service_unit_keeps_only_the_capabilities_the_spec_adds_and_escapes_argv() -> None:
    unit = service_unit("web", Service(command=("sh", "-c", 'echo "$HOME" 100%'), cap_add=("net_bind_service",),
                                       read_only=False, no_new_privileges=False), ("sh", "-c", 'echo "$HOME" 100%'))
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit.splitlines()
    assert "NoNewPrivileges=no" in unit.splitlines() and "ProtectSystem=full" in unit.splitlines()
    assert 'ExecStart="sh" "-c" "echo \\"$$HOME\\" 100%%"' in unit.splitlines()


def test_vm_base_adds_the_kernel_systemd_and_cloud_init_to_the_spec_packages() -> None:
    base = vm_base(Base(packages=("python3",)))
    assert {"python3", "linux-image-cloud-amd64", "systemd-sysv", "cloud-init", "udev"} <= set(base.packages)
    assert list(base.packages) == sorted(base.packages)


def test_partition_table_fills_the_disk_after_the_boot_partition() -> None:
    size = 2 * 1024**3
    table = partition_table(size)
    assert "start=2048, size=196608, type=c, bootable" in table
    root_start = 2048 + 196608
    assert f"start={root_start}, size={size // 512 - root_start}, type=83" in table
    assert root_bytes(size) == (size // 512 - root_start) * 512


def test_vm_inputs_hash_follows_what_goes_into_the_image_and_nothing_else() -> None:
    s, vm = spec(), VmBuild()
    same = vm_inputs_hash("a" * 64, s, vm)
    assert same == vm_inputs_hash("a" * 64, spec(), VmBuild())
    assert same != vm_inputs_hash("b" * 64, s, vm)  # other files or steps
    assert same != vm_inputs_hash("a" * 64, spec(services__web__user="1000"), vm)  # another unit
    assert same != vm_inputs_hash("a" * 64, s, VmBuild(size="3G"))
    # An environment's port or an agent setting is config, not an input.
    assert same == vm_inputs_hash("a" * 64, spec(environments__vmtest__port=9000), vm)


def test_guest_files_carry_provenance_and_the_engine_boots_read_only() -> None:
    files = {f.path: f for f in guest_files(spec(), {"commit": "abc", "dirty": False})}
    assert json.loads(files["/etc/kiln/provenance.json"].text)["commit"] == "abc"
    assert files["/usr/lib/kiln/seed"].mode == 0o755
    assert "/etc/systemd/system/kiln-web.service" in files
    assert " ro " in ENGINE_CMDLINE and "cloud-init=disabled" in ENGINE_CMDLINE


def test_qemu_argv_forwards_the_service_port_and_sizes_the_guest() -> None:
    argv = qemu_argv(512 * 1024**2, 1.0, 8000, "tcg")
    assert argv[:3] == ["qemu-system-x86_64", "-accel", "tcg,tb-size=64"]
    assert argv[argv.index("-m") + 1] == "512M"
    assert "user,id=net0,hostfwd=tcp::8000-:8000" in argv
    assert f"file={VM_RUN}/overlay.qcow2,if=virtio,format=qcow2,discard=unmap" in argv
    assert "-kernel" in argv and "-no-reboot" in argv
    assert "user,id=net0" in qemu_argv(512 * 1024**2, 1.0, None, "tcg")  # a worker: nothing forwarded
    assert qemu_argv(512 * 1024**2, 2.0, None, "kvm")[1:5] == ["-accel", "kvm", "-cpu", "host"]


def test_launcher_spec_hardens_the_launcher_and_moves_the_environment_into_the_seed() -> None:
    spec_ = ContainerSpec(name="kiln-hello-vmtest-web-v1-abc", image="kiln-vm/hello@sha256:" + "1" * 64,
                          network="kiln-hello-vmtest", labels={"kiln.service": "web", "kiln.role": "instance"},
                          environment={"PORT": "8000", "SECRET": "secret:TOKEN"},
                          hardening=Hardening(user="65534", cap_add=("NET_ADMIN",)),
                          limits=Limits(memory=512 * 1024**2, cpus=1.0, pids=512))
    got = launcher_spec(spec_, Path("/home/vm/abc"), "sha256:launcher", 'PORT="8000"\n', "tcg")
    assert got.image == "sha256:launcher" and got.labels[IMAGE_LABEL] == spec_.image
    assert got.hardening == Hardening(writable=(VM_RUN,))  # read-only, no-new-privileges, no capability, no user
    assert got.environment == {"KILN_VM_SERVICE": "web", "KILN_VM_ENV": 'PORT="8000"\n'}
    assert got.ro_binds == {"/home/vm/abc": IMAGE_DIR} and got.binds == {}
    assert got.limits.memory == 512 * 1024**2 + QEMU_OVERHEAD
    assert got.command[:2] == ("/bin/sh", "-c") and got.command[3:5] == ("kiln-launch", "qemu-system-x86_64")
    assert "hostfwd=tcp::8000-:8000" in " ".join(got.command)


def test_engine_qemu_needs_a_command_and_a_check_through_the_port() -> None:
    problems = dict(spec_problems(spec(services__web__healthcheck={"command": ["true"]})))
    assert any("kiln checks an instance through its port" in v for v in problems.values())
    assert ("services", "web", "healthcheck", "command") in problems
    problems = dict(spec_problems(spec(services__web__command=None)))
    assert ("services", "web", "command") in problems
    assert not dict(spec_problems(spec()))


def test_engine_qemu_refuses_an_environment_value_on_two_lines() -> None:
    problems = dict(spec_problems(spec(environments__vmtest__services={"web": {"environment": {"PEM": "a\nb"}}})))
    assert ("services", "web", "environment", "PEM") in problems


def test_a_vm_environment_gets_the_boot_timeout_added_to_its_health_deadline() -> None:
    s = spec()
    assert resolve(s, "production").service("web").healthcheck.deadline == 30
    assert resolve(s, "vmtest").service("web").healthcheck.deadline == 30 + 180
    assert resolve(spec(build__vm={"boot_timeout": "1m"}), "vmtest").service("web").healthcheck.deadline == 90


def test_vm_build_refuses_a_disk_too_small_or_not_in_megabytes() -> None:
    with pytest.raises(ValueError, match="at least 1G"):
        VmBuild(size="512M")
    with pytest.raises(ValueError, match="whole number of megabytes"):
        VmBuild(size="1500K")


def _stored(store: VmStore, inputs: str, sha: str, app: str = "hello") -> Path:
    d = store.root / inputs[:16]
    d.mkdir(parents=True)
    (d / "disk.qcow2").write_bytes(b"disk")
    (d / "provenance.json").write_text(json.dumps({"app": app, "inputs": inputs, "sha256": sha,
                                                   "app_image": "sha256:" + "f" * 64, "commit": "c0ffee", "dirty": False}))
    (store.root / "by-digest").mkdir(exist_ok=True)
    (store.root / "by-digest" / sha).symlink_to(Path("..") / d.name)
    return d


def test_vm_store_finds_images_by_inputs_and_by_digest(tmp_path: Path) -> None:
    store = VmStore(tmp_path)
    d = _stored(store, "1" * 64, "2" * 64)
    ref = vm_ref("hello", "2" * 64)
    assert is_vm_ref(ref) and not is_vm_ref("sha256:" + "2" * 64) and not is_vm_ref("reg:5000/hello@sha256:" + "2" * 64)
    found = store.by_ref(ref)
    assert found is not None and found.dir == d and found.inputs_hash == "1" * 64
    assert store.by_inputs("1" * 64) == found
    assert store.by_ref(vm_ref("hello", "3" * 64)) is None
    assert [i.ref for i in store.all()] == [ref]
    store.remove(found)
    assert store.by_ref(ref) is None and store.all() == []


def test_accel_is_chosen_by_the_setting_else_remembered_else_tcg_without_a_usable_kvm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.providers import qemu

    cache = tmp_path / "accel"
    monkeypatch.setenv("KILN_QEMU_ACCEL", "kvm")
    assert qemu.detect_accel(tmp_path / "vmlinuz", cache) == "kvm" and not cache.exists()
    monkeypatch.delenv("KILN_QEMU_ACCEL")
    cache.write_text("kvm\n")
    assert qemu.detect_accel(tmp_path / "vmlinuz", cache) == "kvm"
    cache.unlink()
    monkeypatch.setattr(qemu, "KVM", str(tmp_path / "no-kvm"))
    assert qemu.detect_accel(tmp_path / "vmlinuz", cache) == "tcg"
    assert cache.read_text() == "tcg\n"


def test_a_kvm_launcher_gets_the_kvm_device() -> None:
    spec_ = ContainerSpec(name="vm", image="kiln-vm/hello@sha256:" + "1" * 64, network="n", labels={})
    assert launcher_spec(spec_, Path("/d"), "sha256:l", "", "kvm").devices == ("/dev/kvm",)
    assert launcher_spec(spec_, Path("/d"), "sha256:l", "", "tcg").devices == ()


def test_promotion_between_a_container_and_a_vm_environment_is_refused(tmp_path: Path) -> None:
    from kiln.errors import UsageError
    from kiln.usecases import environments as envs
    from kiln.usecases.deploy import deploy
    from unit.world import World

    w = World.make(tmp_path, spec=json.dumps(SPEC))
    deploy(w.ctx, w.load(), "production")
    with pytest.raises(UsageError, match="promotion moves one artifact unchanged"):
        envs.promote_artifact(w.ctx, w.load(), "production", "vmtest")


def test_overlay_writes_count_only_what_the_overlay_itself_holds() -> None:
    from kiln.providers.qemu import overlay_writes

    untouched = json.dumps([{"start": 0, "length": 2 * 1024**3, "depth": 1, "present": True, "zero": False, "data": True},
                            {"start": 2 * 1024**3, "length": 1024**2, "depth": 1, "present": False, "zero": True, "data": False}])
    assert overlay_writes(untouched) == 0  # everything read through from the release's image
    written = json.dumps([{"start": 0, "length": 65536, "depth": 0, "present": True, "zero": False, "data": True},
                          {"start": 65536, "length": 1024**3, "depth": 1, "present": True, "zero": False, "data": True}])
    assert overlay_writes(written) == 65536
    assert overlay_writes("not json") == 0


def test_a_write_to_a_vms_root_disk_taints_it() -> None:
    from kiln.agent.drift import changed_files

    assert changed_files(["C /dev/vda: 64 KiB written to the VM's read-only root disk"], ("/run/vm",)) == [
        "C /dev/vda: 64 KiB written to the VM's read-only root disk"]


def _staged(store: VmStore, name: str, inputs: str, sha: str) -> Path:
    d = store.root / name
    d.mkdir(parents=True)
    (d / "disk.qcow2").write_bytes(sha.encode())
    (d / "provenance.json").write_text(json.dumps({"app": "hello", "inputs": inputs, "sha256": sha,
                                                   "app_image": "sha256:" + "f" * 64, "commit": None, "dirty": True}))
    return d


def test_vm_store_add_indexes_a_new_image_and_keeps_one_that_landed_first(tmp_path: Path) -> None:
    store = VmStore(tmp_path)
    first = store.add(_staged(store, "vm-a", "1" * 64, "a" * 64), "1" * 64, "a" * 64)
    assert first.sha256 == "a" * 64 and store.by_ref(vm_ref("hello", "a" * 64)) == first
    staged = _staged(store, "vm-b", "1" * 64, "b" * 64)  # the same inputs, baked again at the same time
    again = store.add(staged, "1" * 64, "b" * 64)
    assert again == first and not staged.exists()  # VMs may run from the first: it stays
    assert store.by_ref(vm_ref("hello", "b" * 64)) is None
