"""The QEMU engine: each instance is a virtual machine booted from its release's VM image.

As KubeVirt's virt-launcher does, each VM's QEMU runs in a container of its own (the launcher,
from bake/vm_recipe.LAUNCHER_BASE) on the environment's network, so everything kiln does with
containers holds for VMs: labels, listing, resource limits (the VM's memory plus QEMU's own),
`die` events when QEMU ends (killed, or the machine powered off when its service ended), logs (the
serial console), and the router reaching the instance's address. The launcher forwards the
service's port to the guest (QEMU's user-mode network, so no bridge, tap or root on the host).

The release's disk image is bind-mounted read-only; each VM writes to a copy-on-write overlay
in the launcher's tmpfs, gone with it. Its environment reaches it as a cloud-init NoCloud seed
(a FAT disk labelled CIDATA, made in the launcher's tmpfs at boot), never on the image. The
router, hooks and CI steps stay containers: hooks run the container image baked from the same
files as the VM image."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from kiln import process
from kiln.bake.base import base_tag
from kiln.bake.inputs import base_inputs_hash
from kiln.bake.vm import INITRD, KERNEL, VmStore, is_vm_ref
from kiln.bake.vm_recipe import ENGINE_CMDLINE, LAUNCHER_BASE, env_file, parse_env_file
from kiln.errors import EngineError
from kiln.providers.base import (
    INSTANCE,
    ContainerDetails,
    ContainerFacts,
    ContainerSpec,
    Engine,
    EngineEvent,
    Finished,
    Limits,
)
from kiln.providers.docker_api import DockerApi
from kiln.providers.qemu_kind import QEMU
from kiln.secretref import Lookup, resolve
from kiln.settings import Settings
from kiln.spec.hardening import Hardening
from kiln.spec.models import HealthCheck

VM_RUN = "/run/vm"  # the launcher's tmpfs: the VM's overlay and seed
# The launcher container's own confinement (the service's lives in the guest's systemd unit).
LAUNCHER_HARDENING = Hardening(writable=(VM_RUN,))
IMAGE_DIR = "/vm"  # where the release's disk, kernel and initrd are mounted (read-only)
QEMU_OVERHEAD = 256 * 1024**2  # QEMU's own memory beside the guest's (TCG's translation cache is capped at 64 MiB)
IMAGE_LABEL = "kiln.vm.image"
KVM = "/dev/kvm"

# The launcher's PID 1 (under docker-init): the seed disk from the environment kiln passed, the
# overlay, then QEMU in its place. QEMU's arguments follow as "$@"; nothing here is spliced from input.
LAUNCH = f"""set -eu
mkdir -p {VM_RUN}/seed/kiln
printf 'instance-id: %s\\nlocal-hostname: %s\\n' "$HOSTNAME" "$KILN_VM_SERVICE" > {VM_RUN}/seed/meta-data
printf '#cloud-config\\n{{}}\\n' > {VM_RUN}/seed/user-data
printf '%s' "$KILN_VM_ENV" > "{VM_RUN}/seed/kiln/$KILN_VM_SERVICE.env"
unset KILN_VM_ENV
mkfs.vfat -n CIDATA -C {VM_RUN}/seed.img 2048 >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i {VM_RUN}/seed.img {VM_RUN}/seed/meta-data {VM_RUN}/seed/user-data {VM_RUN}/seed/kiln ::
rm -rf {VM_RUN}/seed
qemu-img create -q -f qcow2 -F qcow2 -b {IMAGE_DIR}/disk.qcow2 {VM_RUN}/overlay.qcow2
exec "$@"
"""


def detect_accel(kernel: Path, cache: Path) -> str:
    """kvm if a VM boots with KVM on this host, else tcg; KILN_QEMU_ACCEL=kvm|tcg decides instead.
    The probe boots the kernel with no root until it panics (a second with KVM): a /dev/kvm
    that is there but fails hangs QEMU instead, so no panic within 10 s means TCG. Remembered in `cache`."""
    chosen = os.environ.get("KILN_QEMU_ACCEL", "")
    if chosen in ("kvm", "tcg"):
        return chosen
    with contextlib.suppress(OSError):
        known = cache.read_text().strip()
        if known in ("kvm", "tcg"):
            return known
    accel = "tcg"
    if os.access(KVM, os.R_OK | os.W_OK) and process.which("qemu-system-x86_64"):
        probe = process.run_bounded(["qemu-system-x86_64", "-accel", "kvm", "-nodefaults", "-display", "none",
                                     "-serial", "stdio", "-no-reboot", "-m", "256M", "-kernel", str(kernel),
                                     "-append", "console=ttyS0 panic=-1"], timeout=10)
        accel = "kvm" if "Kernel panic" in probe.stdout else "tcg"
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(accel + "\n")
    return accel


def launcher_image_tag() -> str:
    return base_tag(base_inputs_hash(LAUNCHER_BASE))


def accel_args(accel: str) -> list[str]:
    """KVM when it works on this host, else TCG (software emulation), with its translation cache capped."""
    return ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg,tb-size=64"]


def qemu_argv(memory: int, cpus: float, port: int | None, accel: str) -> list[str]:
    """QEMU's command line for one instance. Pure."""
    forward = f",hostfwd=tcp::{port}-:{port}" if port else ""
    return ["qemu-system-x86_64", *accel_args(accel), "-m", f"{max(memory // 1024**2, 128)}M",
            "-smp", str(max(1, int(cpus))), "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-no-reboot",
            "-kernel", f"{IMAGE_DIR}/{KERNEL}", "-initrd", f"{IMAGE_DIR}/{INITRD}", "-append", ENGINE_CMDLINE,
            "-drive", f"file={VM_RUN}/overlay.qcow2,if=virtio,format=qcow2,discard=unmap",
            "-drive", f"file={VM_RUN}/seed.img,if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=net0{forward}", "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci"]


def launcher_limits(limits: Limits) -> Limits:
    return replace(limits, memory=limits.memory + QEMU_OVERHEAD)


def launcher_spec(spec: ContainerSpec, image_dir: Path, launcher: str, env_text: str, accel: str) -> ContainerSpec:
    """The launcher container of the VM `spec` describes. Pure; `env_text` is the instance's
    environment file (secrets resolved), which goes into the seed."""
    port = spec.environment.get("PORT")
    argv = qemu_argv(spec.limits.memory, spec.limits.cpus, int(port) if port and port.isdigit() else None, accel)
    return ContainerSpec(
        name=spec.name, image=launcher, network=spec.network,
        labels={**spec.labels, IMAGE_LABEL: spec.image},
        command=("/bin/sh", "-c", LAUNCH, "kiln-launch", *argv),
        environment={"KILN_VM_SERVICE": spec.labels.get("kiln.service", "app"), "KILN_VM_ENV": env_text},
        hardening=LAUNCHER_HARDENING, stop_grace_period=spec.stop_grace_period, limits=launcher_limits(spec.limits),
        binds={}, ro_binds={str(image_dir): IMAGE_DIR}, devices=(KVM,) if accel == "kvm" else ())


def overlay_writes(qemu_img_map: str) -> int:
    """Bytes the overlay itself holds (depth 0 data), from `qemu-img map --output=json`."""
    try:
        extents = json.loads(qemu_img_map)
    except ValueError:
        return 0
    return sum(e.get("length", 0) for e in extents if e.get("data") and e.get("depth") == 0)


def _as_vm(facts: ContainerFacts) -> ContainerFacts:
    """A launcher's facts with the VM image it boots as its image."""
    image = facts.labels.get(IMAGE_LABEL)
    return replace(facts, image=image) if image else facts


class QemuProvider:
    """Instances as QEMU VMs (each in its launcher container) on this host's Docker engine; the
    launchers, and every other container, through its `DockerApi`."""

    name = QEMU.name
    host_network = QEMU.host_network

    def __init__(self, extra_labels: dict[str, str] | None, secrets: Lookup | None, home: Path) -> None:
        self.docker = DockerApi(extra_labels, secrets)
        self.store = VmStore(home)  # KILN_HOME, as Settings resolves it
        self._accel: str | None = None

    # --- images: a VM image is a file in the store, named by its sha256 ----------------------

    def image_id(self, ref: str) -> str | None:
        if is_vm_ref(ref):
            return ref if self.store.by_ref(ref) else None
        return self.docker.image_id(ref)

    def image_env(self, image: str) -> dict[str, str]:
        return {} if is_vm_ref(image) else self.docker.image_env(image)

    def find_image(self, tag: str, labels: dict[str, str]) -> str | None:
        return self.docker.find_image(tag, labels)

    def images(self, labels: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        return self.docker.images(labels)

    def remove_image(self, image: str) -> None:
        self.docker.remove_image(image)

    def import_rootfs(self, tarball: Path, tag: str, labels: dict[str, str], changes: list[str]) -> str:
        return self.docker.import_rootfs(tarball, tag, labels, changes)

    def export_rootfs(self, image: str, dest: Path) -> None:
        self.docker.export_rootfs(image, dest)

    def build(self, context: BinaryIO, dockerfile: str, tag: str, args: dict[str, str],
              labels: dict[str, str], on_line: Callable[[str], None]) -> str:
        return self.docker.build(context, dockerfile, tag, args, labels, on_line)

    def push(self, image: str, repository: str) -> str:
        return self.docker.push(image, repository)

    def pull(self, ref: str) -> str:
        """A VM image in the store is there already; a container image is pulled by the engine."""
        return self.image_id(ref) or self.docker.pull(ref)

    def publish(self, image: str, repository: str | None) -> str:
        return image  # the VM image stays on this host

    # --- networks -----------------------------------------------------------------------------

    def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        self.docker.ensure_network(name, labels)

    def remove_network(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.docker.remove_network(name, labels)

    # --- instances ----------------------------------------------------------------------------

    def start(self, spec: ContainerSpec) -> ContainerFacts:
        return _as_vm(self.docker.start(self._container(spec)))

    def _container(self, spec: ContainerSpec) -> ContainerSpec:
        """The container the engine runs for `spec`: an instance's launcher, booting its VM image;
        a hook of a VM release runs the container image of the same files; the router and CI
        steps run as they are."""
        if not is_vm_ref(spec.image):
            if spec.labels.get("kiln.role") == INSTANCE:
                raise EngineError(f"engine qemu runs VM images, and {spec.name} names the container image {spec.image[:19]}.",
                                  "Deploy to this environment with `kiln deploy`, which bakes its VM image.")
            return spec  # the router, a CI step
        vm = self.store.require(spec.image)
        if spec.labels.get("kiln.role") != INSTANCE:  # a hook: the container image of the same files
            return replace(spec, image=vm.app_image)
        launcher = self.docker.image_id(launcher_image_tag())
        if launcher is None:
            raise EngineError(f"the VM launcher image {launcher_image_tag()} is not on this engine.",
                              "Run `kiln bake --vm` (it bakes the launcher with the VM image).")
        try:
            env_text = env_file(resolve(spec.environment, self.docker.secrets))
        except ValueError as exc:
            raise EngineError(f"starting VM {spec.name}: {exc}.") from None
        if self._accel is None:
            self._accel = detect_accel(vm.dir / KERNEL, self.store.root / "accel")
        return launcher_spec(spec, vm.dir, launcher, env_text, self._accel)

    def containers(self, labels: dict[str, str]) -> list[ContainerFacts]:
        return [_as_vm(c) for c in self.docker.containers(labels)]

    def container(self, name: str) -> ContainerFacts | None:
        found = self.docker.container(name)
        return _as_vm(found) if found else None

    def logs(self, name: str, tail: int = 20) -> str:
        """The VM's serial console (a boot says more per line than a process: a longer tail)."""
        return self.docker.logs(name, tail=max(tail, 15))

    def stop(self, name: str, grace: float) -> None:
        self.docker.stop(name, grace)

    def remove(self, name: str) -> None:
        self.docker.remove(name)

    def run_once(self, spec: ContainerSpec, timeout: float) -> tuple[int | None, str]:
        return self.docker.run_once(self._container(spec), timeout)

    def run_streamed(self, spec: ContainerSpec, on_line: Callable[[str], None], timeout: float,
                     cancelled: Callable[[], bool]) -> Finished:
        return self.docker.run_streamed(self._container(spec), on_line, timeout, cancelled)

    # --- kiln's own requests to a VM: to its launcher's address, which forwards the service's port --

    def probe(self, c: ContainerFacts, check: HealthCheck | None, port: int | None) -> bool:
        return self.docker.probe(c, check, port)

    def get(self, c: ContainerFacts, port: int, path: str, timeout: float) -> tuple[int, str]:
        return self.docker.get(c, port, path, timeout)

    # --- what drift compares: the VM's environment (from its seed) and its launcher's hardening --

    def enforceable(self, spec: ContainerSpec) -> ContainerSpec:
        if not is_vm_ref(spec.image):
            return spec
        # The service's own hardening lives in the guest's systemd unit; the engine shows the launcher's.
        return replace(spec, hardening=LAUNCHER_HARDENING, limits=launcher_limits(spec.limits), health_command=None)

    def changes(self, name: str) -> list[str]:
        """Writes to the VM's root disk, which its guest mounts read-only: none, unless someone
        remounted it (read from the overlay in the launcher's tmpfs, through /proc: no exec)."""
        pid = self.docker.pid(name)
        if not pid:
            return []
        overlay = {"driver": "qcow2", "backing": None,  # the overlay alone: its backing path is the launcher's
                   "file": {"driver": "file", "filename": f"/proc/{pid}/root{VM_RUN}/overlay.qcow2"}}
        mapped = process.run(["qemu-img", "map", "-U", "--output=json", "json:" + json.dumps(overlay)])
        written = overlay_writes(mapped.stdout) if mapped.ok else 0
        return [f"C /dev/vda: {written // 1024} KiB written to the VM's read-only root disk"] if written else []

    def details(self, name: str) -> ContainerDetails | None:
        found = self.docker.details(name)
        if found is None or "KILN_VM_ENV" not in found.env:
            return found
        return replace(found, env=parse_env_file(found.env["KILN_VM_ENV"]),
                       mounts=tuple(m for m in found.mounts if not m.endswith(":" + IMAGE_DIR)))

    def events(self, labels: dict[str, str], since: float | None = None,
               until: float | None = None) -> Iterator[EngineEvent]:
        return self.docker.events(labels, since, until)


def _implements(provider: QemuProvider) -> Engine:
    """Never called: mypy checks here that the provider implements every method of Engine."""
    return provider


def open_provider(settings: Settings, secrets: Lookup) -> QemuProvider:
    """The `qemu` engine's provider (its declaration's entry point, providers/qemu_kind.py)."""
    return QemuProvider(settings.extra_labels, secrets=secrets, home=settings.home)
