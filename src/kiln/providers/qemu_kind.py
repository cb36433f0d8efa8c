"""The `qemu` engine's declaration: QEMU virtual machines on this host, booted from the VM image
baked from the same inputs as the app image. Its provider is providers/qemu.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.providers.kind import VM_IMAGE, EngineKind

if TYPE_CHECKING:
    from kiln.spec.models import Spec

VM_BOOT_TIMEOUT = 180.0  # build.vm.boot_timeout's default: a TCG boot takes 10-15 s, a loaded host more


def boot_grace(spec: Spec) -> float:
    """A new instance boots a whole machine first: build.vm.boot_timeout."""
    vm = spec.build.vm
    return vm.boot_timeout if vm is not None else VM_BOOT_TIMEOUT


QEMU = EngineKind(
    name="qemu",
    description="QEMU virtual machines on this host booted from the VM image (build.vm, docs/vm.md)",
    artifact=VM_IMAGE,
    builder="kiln.bake.vm:bake_vm_image",  # the VM image of the same inputs, kept in KILN_HOME/vm
    provider="kiln.providers.qemu:open_provider",
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
