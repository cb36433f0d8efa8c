"""Base images baked from Debian's packages with debootstrap: no registry needed.

A base is tagged by the hash of its inputs; a second call with the same inputs finds it by
label and returns at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kiln import process
from kiln.bake.inputs import base_inputs_hash
from kiln.errors import BuildError
from kiln.output import Output
from kiln.providers.base import Images
from kiln.spec.models import Base

BASE_REPO = "kiln-base"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_CLEANUP = ("var/cache/apt/archives", "var/lib/apt/lists", "var/log")


@dataclass(frozen=True)
class BaseImage:
    id: str
    tag: str
    inputs_hash: str
    built: bool


def debootstrap_argv(base: Base, rootfs: Path) -> list[str]:
    """debootstrap's command line. The mirror is untrusted input (it comes from the spec): every
    Release file must be signed by a key of Debian's archive keyring, or debootstrap stops. (Not
    part of the base's inputs hash: verifying changes no byte of a good base.)"""
    argv = ["debootstrap", "--variant=minbase", f"--keyring={KEYRING}", "--force-check-gpg"]
    if base.packages:
        argv.append("--include=" + ",".join(sorted(set(base.packages))))
    return [*argv, base.suite, str(rootfs), base.mirror]  # none starts with '-' (spec/models.Base)


def base_tag(inputs_hash: str) -> str:
    return f"{BASE_REPO}:{inputs_hash[:16]}"


def ensure_base(images: Images, base: Base, out: Output, scratch: Path) -> BaseImage:
    inputs = base_inputs_hash(base)
    tag = base_tag(inputs)
    found = images.find_image(tag, {"kiln.base.inputs": inputs})
    if found:
        return BaseImage(found, tag, inputs, built=False)
    if not process.which("debootstrap"):
        raise BuildError("debootstrap is not installed, so no base image can be baked.",
                         "Install it: apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise BuildError("baking a base image with debootstrap needs root.", "Run `kiln base build` as root once.")
    if not Path(KEYRING).is_file():
        raise BuildError(f"Debian's archive keyring {KEYRING} is missing, so the packages could not be verified.",
                         "Install it: apt-get install -y debian-archive-keyring")
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=scratch))
    try:
        rootfs = work / "rootfs"
        argv = debootstrap_argv(base, rootfs)
        packages = ", ".join(base.packages) or "no extra packages"
        with out.working(f"Baking base {tag} (Debian {base.suite}, {packages})") as update:
            result = process.stream(argv, update)
            if not result.ok:
                raise BuildError(f"debootstrap failed (exit {result.code}).", f"Last output:\n{result.stderr}")
            for rel in _CLEANUP:
                target = rootfs / rel
                if target.is_dir():
                    for child in target.iterdir():
                        if child.is_file():
                            child.unlink()
            tarball = work / "rootfs.tar"
            packed = process.run(("tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."))
            if not packed.ok:
                raise BuildError(f"packing the base rootfs failed: {packed.stderr.strip()}")
            update("importing into Docker")
            labels = {"kiln.base.inputs": inputs, "kiln.base.suite": base.suite,
                      "kiln.base.packages": ",".join(sorted(set(base.packages)))}
            changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
            image = images.import_rootfs(tarball, tag, labels, changes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.done(f"Baked base {tag}")
    return BaseImage(image, tag, inputs, built=True)
