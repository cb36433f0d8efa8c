"""What goes into a VM image besides the app image's files, and how its disk is laid out. Pure.

The VM image is the app image's filesystem, baked from the same steps and files on a base with
Debian's cloud kernel, systemd, udev and cloud-init added; plus one systemd unit per service,
hardened like a container (no new privileges, no capabilities, read-only system, tmpfs at the
writable paths), and `kiln-seed`, which copies an instance's environment from its NoCloud seed
(a disk labelled CIDATA) into /run before any service starts. On a cloud, cloud-init reads the
same seed (or ConfigDrive, OpenStack metadata) and may write /etc/kiln/SERVICE.env instead.

A VM runs the one service whose environment file it was given (`ConditionPathExists`); when that
service exits, the machine powers off, and kiln replaces it: nothing in a VM is restarted or repaired."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from kiln.spec.models import Base, Service, Spec, VmBuild
from kiln.spec.resolve import canonical_json

RECIPE = 1  # bump when what this module writes changes: it is part of every VM image's inputs
ROOT_LABEL = "kiln-root"
BOOT_LABEL = "KILNBOOT"
BOOT_MIB = 96  # the FAT partition holding syslinux, the kernel and its initrd
FIRST_MIB = 1  # the partitions start at 1 MiB (the MBR and syslinux's boot code come before)

# Added to the spec's base packages. python3-cffi-backend: cloud-init's python3-cryptography
# depends on a virtual package debootstrap does not resolve.
VM_PACKAGES = ("linux-image-cloud-amd64", "systemd-sysv", "udev", "cloud-init", "python3-cffi-backend")
# The launcher image: QEMU and what builds an instance's seed disk. It runs as a container, one per
# VM, as KubeVirt's virt-launcher does, so the engine's lifecycle, limits and events apply to VMs.
LAUNCHER_BASE = Base(packages=("qemu-system-x86", "qemu-utils", "dosfstools", "mtools"))

ENV_DIR = "/run/kiln/env"  # where kiln-seed puts an instance's environment (tmpfs: never on disk)
CLOUD_ENV_DIR = "/etc/kiln"  # where cloud-init's write_files may put one on a cloud
# Units a server needs no time for at boot (apt's timers run on a machine that is replaced, not updated).
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
          "fstrim.timer", "dpkg-db-backup.timer", "systemd-random-seed.service",
          "getty.target", "serial-getty@ttyS0.service")  # and no logins: a server is replaced, never logged into

# The seed disk is there without udev: its driver is in the initrd (the root disk's), devtmpfs
# makes the node, and blkid reads the label itself.
SEED_SCRIPT = f"""#!/bin/sh
# kiln-seed: copy this instance's environment from its NoCloud seed (the disk labelled CIDATA).
set -eu
dev=$(blkid -l -t LABEL=CIDATA -o device || blkid -l -t LABEL=cidata -o device || true)
[ -n "$dev" ] || {{ echo "kiln-seed: no seed disk (label CIDATA)"; exit 0; }}
mkdir -p /run/kiln/seed {ENV_DIR}
chmod 0700 {ENV_DIR}
mount -o ro,nosuid,nodev,noexec "$dev" /run/kiln/seed
for f in /run/kiln/seed/kiln/*.env; do
  [ -e "$f" ] && install -m 0600 "$f" {ENV_DIR}/
done
umount /run/kiln/seed
"""

SEED_UNIT = """[Unit]
Description=kiln: this instance's environment from its NoCloud seed
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/kiln/seed

[Install]
WantedBy=sysinit.target
"""

NETWORK = """[Match]
Name=en* eth*

[Network]
DHCP=ipv4
"""

CLOUD_CFG = """# kiln: the datasources a kiln VM image is meant for
datasource_list: [NoCloud, ConfigDrive, OpenStack, None]
"""

FSTAB = f"""LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1
tmpfs /tmp tmpfs nosuid,nodev,mode=1777 0 0
tmpfs /var/tmp tmpfs nosuid,nodev,mode=1777 0 0
"""

# kiln's engine boots the kernel directly with the root read-only (its remount masked) and
# cloud-init off: kiln-seed delivers the environment, and a root nothing writes shows tampering
# as writes to the VM's overlay. A cloud boots through syslinux with cloud-init and a writable root.
# panic=-1: a kernel that cannot boot reboots at once, which ends QEMU (-no-reboot), so a broken
# image fails its rollout in seconds, with the panic on its console, instead of hanging to the deadline.
ENGINE_CMDLINE = (f"root=LABEL={ROOT_LABEL} ro console=ttyS0 panic=-1 cloud-init=disabled "
                  "systemd.mask=systemd-remount-fs.service")
DISK_CMDLINE = f"root=LABEL={ROOT_LABEL} rw console=tty0 console=ttyS0"
SYSLINUX_CFG = f"""DEFAULT kiln
TIMEOUT 0
PROMPT 0
LABEL kiln
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND {DISK_CMDLINE}
"""


def vm_base(base: Base) -> Base:
    """The app's base with what a bootable machine needs added."""
    return base.model_copy(update={"packages": tuple(sorted({*base.packages, *VM_PACKAGES}))})


def unit_name(service: str) -> str:
    return f"kiln-{service}.service"


def _exec_word(arg: str) -> str:
    """One argv word as systemd's ExecStart= reads it: quoted, with its specifiers and variables escaped."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def service_unit(name: str, svc: Service, command: tuple[str, ...]) -> str:
    """The systemd unit of one service: the container's hardening, as systemd applies it."""
    lines = [
        "[Unit]",
        f"Description=kiln service {name}",
        "After=kiln-seed.service cloud-init.service network.target",
        f"ConditionPathExists=|{ENV_DIR}/{name}.env",
        f"ConditionPathExists=|{CLOUD_ENV_DIR}/{name}.env",
        # The service's end is the machine's end: kiln replaces it, nothing restarts it in place.
        "SuccessAction=poweroff-force",
        "FailureAction=poweroff-force",
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(_exec_word(a) for a in command),
        f"EnvironmentFile=-{CLOUD_ENV_DIR}/{name}.env",
        f"EnvironmentFile=-{ENV_DIR}/{name}.env",
        f"User={svc.user or 'root'}",
        f"CapabilityBoundingSet={' '.join('CAP_' + c.upper().removeprefix('CAP_') for c in svc.cap_add)}",
        f"AmbientCapabilities={' '.join('CAP_' + c.upper().removeprefix('CAP_') for c in svc.cap_add)}",
        f"NoNewPrivileges={'yes' if svc.no_new_privileges else 'no'}",
        f"ProtectSystem={'strict' if svc.read_only else 'full'}",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        f"TimeoutStopSec={max(1, round(svc.stop_grace_period))}",
        "KillSignal=SIGTERM",
    ]
    extra = [p for p in svc.writable if p not in ("/tmp", "/var/tmp")]
    if extra:
        lines.append("TemporaryFileSystem=" + " ".join(extra))
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class GuestFile:
    path: str  # absolute, inside the guest
    text: str
    mode: int = 0o644


def guest_files(spec: Spec, provenance: dict[str, object]) -> list[GuestFile]:
    """Every file kiln writes into the VM's root, besides the app image's own."""
    files = [
        GuestFile("/etc/fstab", FSTAB),
        GuestFile("/etc/hostname", f"{spec.app}\n"),
        GuestFile("/etc/systemd/network/50-kiln.network", NETWORK),
        GuestFile("/etc/cloud/cloud.cfg.d/90-kiln.cfg", CLOUD_CFG),
        GuestFile("/usr/lib/kiln/seed", SEED_SCRIPT, 0o755),
        GuestFile("/etc/systemd/system/kiln-seed.service", SEED_UNIT),
        GuestFile("/etc/kiln/provenance.json", json.dumps(provenance, indent=2, sort_keys=True) + "\n"),
        GuestFile("/etc/machine-id", "", 0o444),  # empty: systemd makes one per boot (a read-only root)
    ]
    for name, svc in spec.services.items():
        files.append(GuestFile(f"/etc/systemd/system/{unit_name(name)}", service_unit(name, svc, svc.command or ())))
    return files


def enabled_links(spec: Spec) -> dict[str, str]:
    """Symlinks that enable kiln's units and mask the idle ones: link path -> target."""
    links = {"/etc/systemd/system/sysinit.target.wants/kiln-seed.service": "/etc/systemd/system/kiln-seed.service",
             "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service"}
    for name in spec.services:
        links[f"/etc/systemd/system/multi-user.target.wants/{unit_name(name)}"] = f"/etc/systemd/system/{unit_name(name)}"
    for unit in MASKED:
        links[f"/etc/systemd/system/{unit}"] = "/dev/null"
    return links


def vm_inputs_hash(app_inputs: str, spec: Spec, vm: VmBuild) -> str:
    """The VM image's inputs: the app image's (files, steps, base with the VM packages), the units
    and files kiln adds, and the disk's size. Provenance (commit, dirty) is left out, as for app images."""
    files = [(f.path, f.text, f.mode) for f in guest_files(spec, {})]
    data = {"recipe": RECIPE, "app": app_inputs, "files": files, "links": enabled_links(spec), "size": vm.size,
            "cmdline": [ENGINE_CMDLINE, SYSLINUX_CFG]}
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def partition_table(size: int) -> str:
    """sfdisk's script for the disk: a bootable FAT partition (syslinux, kernel, initrd), then
    the root filesystem to the end."""
    mib = 1024**2
    boot_start, boot_sectors = FIRST_MIB * mib // 512, BOOT_MIB * mib // 512
    root_start = boot_start + boot_sectors
    root_sectors = size // 512 - root_start
    return (f"label: dos\nstart={boot_start}, size={boot_sectors}, type=c, bootable\n"
            f"start={root_start}, size={root_sectors}, type=83\n")


def root_bytes(size: int) -> int:
    return size - (FIRST_MIB + BOOT_MIB) * 1024**2


# An env file kiln-seed hands to systemd (EnvironmentFile=): KEY="value", with \ " ` $ escaped.
_ESCAPE = {"\\": "\\\\", '"': '\\"', "`": "\\`", "$": "\\$"}


def env_file(env: dict[str, str]) -> str:
    for key, value in env.items():
        if "\n" in value or "\x00" in value:
            raise ValueError(f"the value of {key} spans lines, which a VM's environment file cannot hold")
    return "".join(f'{k}="{"".join(_ESCAPE.get(ch, ch) for ch in v)}"\n' for k, v in sorted(env.items()))


def parse_env_file(text: str) -> dict[str, str]:
    """`env_file`'s output read back."""
    out = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep or len(quoted) < 2:
            continue
        raw, value, i = quoted[1:-1], [], 0
        while i < len(raw):
            if raw[i] == "\\" and i + 1 < len(raw):
                i += 1
            value.append(raw[i])
            i += 1
        out[key] = "".join(value)
    return out
