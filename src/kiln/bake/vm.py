"""Bake a bootable VM image from the same inputs as the app image, and keep VM images by digest.

The app's steps run on a base with the VM packages added (bake/vm_recipe.VM_PACKAGES), through
the same baker (so the same files, the same hashing, the same secret screening); that image's
filesystem is exported, kiln's units are written into it (only through its real directories, never
through a symlink the build left: bake/inroot.py), and the disk is assembled as a user
could without root-only tools: `mkfs.ext4 -d` fills the root filesystem from a directory,
`mkfs.vfat` + mtools + `syslinux --install` make the boot partition, sfdisk partitions a plain
file, and qemu-img turns it into qcow2. No loop device, no mount.

A VM image lives in KILN_HOME/vm/ID/ (ID: the first 16 digits of its inputs hash) as disk.qcow2,
with the kernel and initrd (for QEMU's direct kernel boot) and provenance.json; a release names
it `kiln-vm/APP@sha256:DIGEST`, DIGEST being the sha256 of disk.qcow2."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from kiln import process
from kiln.bake import inroot
from kiln.bake.baker import bake
from kiln.bake.base import ensure_base
from kiln.bake.vm_recipe import (
    BOOT_LABEL,
    BOOT_MIB,
    FIRST_MIB,
    LAUNCHER_BASE,
    ROOT_LABEL,
    SYSLINUX_CFG,
    enabled_links,
    guest_files,
    partition_table,
    root_bytes,
    vm_base,
    vm_inputs_hash,
)
from kiln.errors import BuildError, UsageError
from kiln.output import Output
from kiln.providers.base import Images
from kiln.providers.kind import Baked
from kiln.spec.loader import LoadedSpec
from kiln.spec.models import Spec, VmBuild

VM_REPO = "kiln-vm"
DISK = "disk.qcow2"
KERNEL, INITRD = "vmlinuz", "initrd.img"
MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# Host programs the assembly needs, and the Debian package of each.
TOOLS = {"mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "syslinux": "syslinux",
         "sfdisk": "fdisk", "qemu-img": "qemu-utils", "tar": "tar"}
EXPORTS = {"qcow2": ("qcow2", ["-c"]), "raw": ("raw", []), "vmdk": ("vmdk", ["-o", "subformat=streamOptimized"]),
           "gce": ("raw", [])}
_CHUNK = 1024**2


@dataclass(frozen=True)
class VmImage:
    ref: str  # kiln-vm/APP@sha256:…, what a release records
    dir: Path
    sha256: str
    inputs_hash: str
    app_image: str  # the container image of the same files (hooks and CI steps run it)
    commit: str | None
    dirty: bool
    built: bool = False

    @property
    def tag(self) -> str:
        return f"{self.ref.partition('@')[0]}:{self.inputs_hash[:16]}"

    @property
    def disk(self) -> Path:
        return self.dir / DISK


def vm_ref(app: str, sha256: str) -> str:
    return f"{VM_REPO}/{app}@sha256:{sha256}"


def is_vm_ref(ref: str) -> bool:
    return ref.startswith(VM_REPO + "/") and "@sha256:" in ref


class VmStore:
    """VM images on this host, in KILN_HOME/vm/, by inputs and by digest."""

    def __init__(self, home: Path) -> None:
        self.root = home / "vm"

    def _read(self, path: Path) -> VmImage | None:
        try:
            meta = json.loads((path / "provenance.json").read_text())
        except (OSError, ValueError):
            return None
        if not (path / DISK).is_file():
            return None
        return VmImage(vm_ref(meta["app"], meta["sha256"]), path, meta["sha256"], meta["inputs"], meta["app_image"],
                       meta.get("commit"), bool(meta.get("dirty")))

    def by_inputs(self, inputs: str) -> VmImage | None:
        return self._read(self.root / inputs[:16])

    def by_ref(self, ref: str) -> VmImage | None:
        if not is_vm_ref(ref):
            return None
        digest = ref.rpartition("@sha256:")[2]
        link = self.root / "by-digest" / digest
        found = self._read(link.resolve()) if link.exists() else None
        return found if found is not None and found.sha256 == digest else None

    def require(self, ref: str) -> VmImage:
        found = self.by_ref(ref)
        if found is None:
            raise UsageError(f"the VM image {ref} is not in {self.root}.",
                             "Bake it again: check out its commit and run `kiln bake --vm`.")
        return found

    def all(self) -> list[VmImage]:
        if not self.root.is_dir():
            return []
        return [img for p in sorted(self.root.iterdir()) if p.name != "by-digest" and (img := self._read(p))]

    def remove(self, image: VmImage) -> None:
        (self.root / "by-digest" / image.sha256).unlink(missing_ok=True)
        shutil.rmtree(image.dir, ignore_errors=True)

    def add(self, staged: Path, inputs: str, sha256: str) -> VmImage:
        """Move a finished image directory into the store, indexed by its digest. When a bake of
        the same inputs landed first (two deploys at once), that image stays, as VMs may run from
        it, and `staged` is dropped: the disk's bytes differ from bake to bake (filesystem UUIDs,
        times), so the caller records the digest of the image returned."""
        final = self.root / inputs[:16]
        landed = self._read(final)
        if landed is not None:
            shutil.rmtree(staged, ignore_errors=True)
            return landed
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)
        index = self.root / "by-digest"
        index.mkdir(exist_ok=True)
        link = index / sha256
        link.unlink(missing_ok=True)
        link.symlink_to(Path("..") / final.name)
        stored = self._read(final)
        if stored is None:
            raise BuildError(f"the VM image moved to {final} cannot be read back.")
        return stored


def bake_vm(images: Images, loaded: LoadedSpec, out: Output, scratch: Path, store: VmStore) -> VmImage:
    """The VM image of `loaded`'s app: found by its inputs, else baked (minutes the first time:
    debootstrap of the VM base, then the assembly)."""
    spec = loaded.spec
    vm = spec.build.vm or VmBuild()
    flavour = spec.model_copy(update={"build": spec.build.model_copy(update={"base": vm_base(spec.build.base)})})
    app = bake(images, LoadedSpec(flavour, loaded.path, loaded.digest), out, scratch)
    ensure_base(images, LAUNCHER_BASE, out, scratch)  # the engine's VMs run in it (providers/qemu.py)
    inputs = vm_inputs_hash(app.inputs_hash, spec, vm)
    found = store.by_inputs(inputs)
    if found is not None:
        return replace(found, commit=app.commit, dirty=app.dirty)  # this bake's provenance, the stored bytes
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not process.which(tool)]
    if not MBR.is_file():
        missing.append(f"{MBR} (syslinux-common)")
    if missing:
        raise BuildError(f"baking a VM image needs programs that are not installed: {', '.join(missing)}.",
                         "Install them: apt-get install -y e2fsprogs dosfstools mtools syslinux syslinux-common fdisk qemu-utils")
    store.root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vm-", dir=store.root))  # on the store's filesystem: a rename lands it
    try:
        provenance: dict[str, object] = {"app": spec.app, "inputs": inputs, "app_inputs": app.inputs_hash, "app_image": app.id,
                      "commit": app.commit, "dirty": app.dirty, "size": vm.size,
                      "baked_at": datetime.now(UTC).isoformat(timespec="seconds")}
        with out.working(f"Baking VM image {VM_REPO}/{spec.app}:{inputs[:16]}") as update:
            root = work / "root"
            _unpack(images, app.id, work, root, update)
            _customize(root, spec, provenance)
            _assemble(root, work, vm.size, update)
            sha = _sha256(work / DISK)
            (work / "provenance.json").write_text(json.dumps({**provenance, "sha256": sha}, indent=2) + "\n")
            shutil.rmtree(root)
            stored = store.add(work, inputs, sha)
        image = replace(stored, commit=app.commit, dirty=app.dirty, built=True)
        for fmt in vm.formats:
            if fmt != "qcow2":
                export(image, fmt, image.dir / f"{spec.app}.{_suffix(fmt)}", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.done(f"Baked VM image {image.ref[:len(VM_REPO) + len(spec.app) + 21]} ({image.disk.stat().st_size // 1024**2} MiB)")
    return image


def _run(argv: list[str], what: str) -> None:
    result = process.run(argv)
    if not result.ok:
        raise BuildError(f"{what} failed (exit {result.code}): {(result.stderr or result.stdout).strip()[-800:]}")


def _unpack(images: Images, image: str, work: Path, root: Path, update: Callable[[str], None]) -> None:
    update("exporting the image's filesystem")
    tarball = work / "root.tar"
    images.export_rootfs(image, tarball)
    root.mkdir()
    _run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], "unpacking the image's filesystem")
    tarball.unlink()


def _customize(root: Path, spec: Spec, provenance: dict[str, object]) -> None:
    """kiln's files and links written into the unpacked root, through its real directories only
    (bake/inroot.py): the build's steps may have left a symlink to a host folder in the way."""
    for name in (".dockerenv",):
        (root / name).unlink(missing_ok=True)  # a name in kiln's own folder: unlinking follows no link
    for f in guest_files(spec, provenance):
        inroot.write_file(root, f.path, f.text.encode(), f.mode)
    for link, target in enabled_links(spec).items():
        inroot.symlink(root, link, target)


def _boot_files(root: Path) -> tuple[str, str]:
    """The newest kernel and initrd in the image's /boot, as paths inside the image."""
    names = inroot.listdir(root, "/boot")
    kernels = sorted(n for n in names if n.startswith("vmlinuz-"))
    initrds = sorted(n for n in names if n.startswith("initrd.img-"))
    if not kernels or not initrds:
        raise BuildError("the VM image has no kernel or initrd in /boot.",
                         "The VM base should install linux-image-cloud-amd64; run `kiln base build` again.")
    return f"/boot/{kernels[-1]}", f"/boot/{initrds[-1]}"


def _assemble(root: Path, work: Path, size: int, update: Callable[[str], None]) -> None:
    kernel, initrd = _boot_files(root)
    inroot.copy_out(root, kernel, work / KERNEL)
    inroot.copy_out(root, initrd, work / INITRD)
    update("making the root filesystem (mkfs.ext4 -d)")
    rootfs, bootfs, raw = work / "root.ext4", work / "boot.vfat", work / "disk.raw"
    with open(rootfs, "wb") as fh:
        fh.truncate(root_bytes(size))
    _run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-E", "lazy_itable_init=0,lazy_journal_init=0",
          "-d", str(root), str(rootfs)], "mkfs.ext4")
    update("making the boot partition (syslinux)")
    (work / "syslinux.cfg").write_text(SYSLINUX_CFG)
    _run(["mkfs.vfat", "-n", BOOT_LABEL, "-C", str(bootfs), str(BOOT_MIB * 1024)], "mkfs.vfat")
    _run(["mcopy", "-i", str(bootfs), str(work / KERNEL), str(work / INITRD), str(work / "syslinux.cfg"), "::"],
         "copying the kernel onto the boot partition")
    _run(["syslinux", "--install", str(bootfs)], "syslinux --install")
    update("partitioning the disk")
    with open(raw, "wb") as fh:
        fh.truncate(size)
    result = process.run(["sfdisk", "-q", str(raw)], stdin=partition_table(size))
    if not result.ok:
        raise BuildError(f"sfdisk failed: {result.stderr.strip()}")
    with open(raw, "r+b") as disk:
        disk.write(MBR.read_bytes()[:440])  # syslinux's boot code; the partition table follows it
        _copy_sparse(bootfs, disk, FIRST_MIB * 1024**2)
        _copy_sparse(rootfs, disk, (FIRST_MIB + BOOT_MIB) * 1024**2)
    rootfs.unlink()
    bootfs.unlink()
    update("converting to qcow2")
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / DISK)], "qemu-img convert")
    raw.unlink()


def _copy_sparse(src: Path, disk: BinaryIO, offset: int) -> None:
    """`src` into `disk` at `offset`, skipping blocks of zeros (the disk file stays sparse)."""
    zero = bytes(_CHUNK)
    with open(src, "rb") as fh:
        pos = offset
        while chunk := fh.read(_CHUNK):
            if chunk != zero[:len(chunk)]:
                disk.seek(pos)
                disk.write(chunk)
            pos += len(chunk)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _suffix(fmt: str) -> str:
    return "tar.gz" if fmt == "gce" else fmt


def export(image: VmImage, fmt: str, dest: Path, out: Output) -> Path:
    """The image in the format a cloud imports: qcow2 (OpenStack; compressed), raw, vmdk
    (stream-optimized, for AWS import-image), gce (disk.raw in a sparse .tar.gz)."""
    if fmt not in EXPORTS:
        raise UsageError(f"unknown format {fmt!r}.", f"Formats: {', '.join(EXPORTS)}.")
    target, options = EXPORTS[fmt]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with out.working(f"Writing {dest} ({fmt})"):
        if fmt == "gce":
            with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
                raw = Path(tmp) / "disk.raw"  # the name GCE requires inside the archive
                _run(["qemu-img", "convert", "-O", "raw", str(image.disk), str(raw)], "qemu-img convert")
                _run(["tar", "--format=oldgnu", "-Sczf", str(dest), "-C", tmp, "disk.raw"], "tar")
        else:
            _run(["qemu-img", "convert", "-O", target, *options, str(image.disk), str(dest)], "qemu-img convert")
    out.done(f"Wrote {dest} ({dest.stat().st_size // 1024**2} MiB, {fmt})")
    return dest


def bake_vm_image(images: Images, loaded: LoadedSpec, out: Output, scratch: Path, home: Path) -> Baked:
    """The VM image of the same inputs, kept in KILN_HOME/vm (the `qemu` engine's builder,
    providers/qemu_kind.py)."""
    vm = bake_vm(images, loaded, out, scratch, VmStore(home))
    return Baked(vm.ref, vm.tag, vm.inputs_hash, vm.commit, vm.dirty)
