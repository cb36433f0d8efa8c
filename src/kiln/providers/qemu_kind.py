"""The `qemu` engine's declaration: QEMU virtual machines on this host, booted from the VM image
baked from the same inputs as the app image. Its provider is providers/qemu.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kiln.providers.kind import VM_IMAGE, Baked, EngineKind

if TYPE_CHECKING:
    from kiln.output import Output
    from kiln.providers.base import Engine, Images
    from kiln.secretref import Lookup
    from kiln.settings import Settings
    from kiln.spec.loader import LoadedSpec
    from kiln.spec.models import Spec


def bake_vm_image(images: Images, loaded: LoadedSpec, out: Output, scratch: Path, home: Path) -> Baked:
    """The VM image of the same inputs (bake/vm.py), kept in KILN_HOME/vm."""
    from kiln.bake.vm import VmStore, bake_vm

    vm = bake_vm(images, loaded, out, scratch, VmStore(home))
    return Baked(vm.ref, vm.tag, vm.inputs_hash, vm.commit, vm.dirty)


def boot_grace(spec: Spec) -> float:
    """A new instance boots a whole machine first: build.vm.boot_timeout."""
    from kiln.spec.models import VmBuild

    return (spec.build.vm or VmBuild()).boot_timeout


def _open(settings: Settings, secrets: Lookup) -> Engine:
    from kiln.providers.qemu import QemuProvider

    return QemuProvider(settings.extra_labels, secrets=secrets, home=settings.home)


QEMU = EngineKind(
    name="qemu",
    description="QEMU virtual machines on this host booted from the VM image (build.vm, docs/vm.md)",
    artifact=VM_IMAGE,
    bake=bake_vm_image,
    open=_open,
    logs="the VM's serial console",
    host_network=True,  # its launchers are containers on this host's bridges, as docker's instances
    # Recorded since clusters came, though its VM images never leave this host: kept, so that the
    # config digests of its releases stay the same.
    records_registry=True,
    health_kinds=frozenset({"http", "tcp"}),  # through its port: kiln does not exec into a VM
    boot_grace=boot_grace,
    needs_command=True,  # a service's systemd unit runs its argv
    one_line_env=True,  # systemd's environment files take one-line values
)
