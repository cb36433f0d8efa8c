"""Issue 25, finding 2: a VM bake writes kiln's files into the unpacked image's root, and reads
the kernel and initrd out of it, only through real directories of that root. The root is what a
pushed commit's build steps left, and kiln bakes as root: a symlink left at /etc/systemd, /usr/lib,
/etc or /boot, followed, would put kiln's units on the host or bake the host's kernel into the
image. Each such root is a BuildError naming the path, and the "host" (a folder elsewhere in
tmp_path) is exactly as it was; a normal root still gets every file and link, with its mode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kiln.bake import inroot
from kiln.bake.vm import _boot_files, _customize
from kiln.bake.vm_recipe import enabled_links, guest_files
from kiln.errors import BuildError
from kiln.spec.models import Spec

SPEC = Spec.model_validate({
    "app": "hello",
    "build": {"steps": ["COPY app.py /app/app.py"]},
    "services": {"web": {"command": ["python3", "/app/app.py"], "port": 8000}},
    "environments": {"vmtest": {"port": 8090, "engine": "qemu"}},
})
PROVENANCE: dict[str, object] = {"app": "hello", "commit": "abc"}


def make_root(tmp_path: Path) -> Path:
    """The parts of a Debian root kiln writes into or reads from: real directories, a kernel."""
    root = tmp_path / "root"
    for folder in ("etc/systemd/system", "usr/lib", "boot"):
        (root / folder).mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")  # as in bookworm: kiln's links point through it, never write through it
    (root / "boot" / "vmlinuz-1").write_bytes(b"the image's kernel")
    (root / "boot" / "initrd.img-1").write_bytes(b"the image's initrd")
    return root


def make_host(tmp_path: Path) -> Path:
    """A folder standing for the host's /etc/systemd, /usr/lib or /boot."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep").write_text("the host's own file\n")
    (host / "vmlinuz-1").write_bytes(b"the host's kernel")
    (host / "initrd.img-1").write_bytes(b"the host's initrd")
    return host


def snapshot(folder: Path) -> dict[str, tuple[object, ...]]:
    """Everything under `folder`, symlinks not followed: path -> (kind, content or target, mode)."""
    found: dict[str, tuple[object, ...]] = {}
    for path in [folder, *folder.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            found[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[str(path)] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            found[str(path)] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
    return found


def redirect(root: Path, inner: str, target: Path | str) -> None:
    """Replace the image's directory `inner` by a symlink to `target`, as a build step could."""
    path = root / inner
    for sub in sorted(path.rglob("*"), reverse=True):
        sub.rmdir() if sub.is_dir() and not sub.is_symlink() else sub.unlink()
    path.rmdir()
    path.symlink_to(target)


@pytest.mark.parametrize("inner", ["etc/systemd", "usr/lib", "etc"])
def test_a_symlinked_parent_fails_the_bake_and_nothing_lands_on_the_host(tmp_path: Path, inner: str) -> None:
    root, host = make_root(tmp_path), make_host(tmp_path)
    redirect(root, inner, host)
    before = snapshot(host)
    with pytest.raises(BuildError) as err:
        _customize(root, SPEC, PROVENANCE)
    assert err.value.message.startswith(f"/{inner} is a symlink in the image's filesystem (to {host}); kiln writes ")
    assert "only through real directories of the image" in err.value.message
    assert f"Do not leave a symlink at /{inner}" in (err.value.hint or "") and "Dockerfile" in (err.value.hint or "")
    assert snapshot(host) == before  # no unit, no enablement link, no directory, no changed mode


def test_a_relative_symlink_climbing_out_of_the_root_is_refused_too(tmp_path: Path) -> None:
    root, host = make_root(tmp_path), make_host(tmp_path)
    redirect(root, "etc/systemd", "../../host")  # root/etc/systemd -> tmp_path/host
    before = snapshot(host)
    with pytest.raises(BuildError, match="/etc/systemd is a symlink"):
        _customize(root, SPEC, PROVENANCE)
    assert snapshot(host) == before


def test_a_parent_that_is_a_file_is_a_clear_build_error(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    redirect(root, "etc/systemd", "unused")
    (root / "etc" / "systemd").unlink()
    (root / "etc" / "systemd").write_text("not a folder\n")
    with pytest.raises(BuildError) as err:
        _customize(root, SPEC, PROVENANCE)
    assert err.value.message.startswith("/etc/systemd is a regular file in the image's filesystem, not a directory")
    assert "Dockerfile" in (err.value.hint or "")


def test_a_leaf_symlinked_to_a_host_file_is_replaced_inside_the_root(tmp_path: Path) -> None:
    root, host = make_root(tmp_path), make_host(tmp_path)
    (root / "etc" / "hostname").symlink_to(host / "keep")
    (root / "etc" / "systemd" / "system" / "getty.target").symlink_to(host / "keep")  # a masking link's place
    before = snapshot(host)
    _customize(root, SPEC, PROVENANCE)
    assert snapshot(host) == before
    hostname = root / "etc" / "hostname"
    assert not hostname.is_symlink() and hostname.read_text() == "hello\n"
    assert stat.S_IMODE(hostname.stat().st_mode) == 0o644
    assert os.readlink(root / "etc" / "systemd" / "system" / "getty.target") == "/dev/null"


def test_a_normal_root_gets_every_file_and_link_with_its_mode(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / ".dockerenv").write_text("")
    old = root / "etc" / "hostname"  # files a Debian root already has: replaced, mode as kiln says
    old.write_text("buildkitsandbox\n")
    old.chmod(0o600)
    (root / "etc" / "machine-id").write_text("0123456789abcdef\n")
    (root / "etc" / "systemd" / "system" / "getty.target").write_text("a file where a link goes\n")
    old_umask = os.umask(0o077)  # whatever the umask, the files and folders get their modes
    try:
        _customize(root, SPEC, PROVENANCE)
    finally:
        os.umask(old_umask)
    for f in guest_files(SPEC, PROVENANCE):
        path = root / f.path.lstrip("/")
        assert not path.is_symlink() and path.read_text() == f.text, f.path
        assert stat.S_IMODE(path.stat().st_mode) == f.mode, f.path
    for link, target in enabled_links(SPEC).items():
        assert os.readlink(root / link.lstrip("/")) == target, link
    for made in ("usr/lib/kiln", "etc/kiln", "etc/cloud/cloud.cfg.d", "etc/systemd/system/multi-user.target.wants"):
        assert stat.S_IMODE((root / made).stat().st_mode) == 0o755, made
    assert not (root / ".dockerenv").exists() and os.readlink(root / "lib") == "usr/lib"


def test_a_boot_symlinked_to_the_hosts_is_refused_and_nothing_is_read(tmp_path: Path) -> None:
    root, host = make_root(tmp_path), make_host(tmp_path)
    redirect(root, "boot", host)
    with pytest.raises(BuildError) as err:
        _boot_files(root)
    assert err.value.message.startswith(f"/boot is a symlink in the image's filesystem (to {host}); kiln reads ")
    out = tmp_path / "vmlinuz"
    with pytest.raises(BuildError, match="/boot is a symlink"):
        inroot.copy_out(root, "/boot/vmlinuz-1", out)
    assert not out.exists()


def test_a_kernel_that_is_a_symlink_or_not_a_file_is_not_read(tmp_path: Path) -> None:
    root, host = make_root(tmp_path), make_host(tmp_path)
    (root / "boot" / "vmlinuz-2").symlink_to(host / "vmlinuz-1")  # the newest: the one a bake reads
    assert _boot_files(root) == ("/boot/vmlinuz-2", "/boot/initrd.img-1")
    out = tmp_path / "vmlinuz"
    with pytest.raises(BuildError, match=r"^/boot/vmlinuz-2 is a symlink in the image's filesystem"):
        inroot.copy_out(root, "/boot/vmlinuz-2", out)
    os.mkfifo(root / "boot" / "vmlinuz-3")  # a FIFO (or a device node) is refused without blocking on it
    with pytest.raises(BuildError, match=r"^/boot/vmlinuz-3 is a FIFO in the image's filesystem, not a regular file"):
        inroot.copy_out(root, "/boot/vmlinuz-3", out)
    assert not out.exists()


def test_the_newest_kernel_and_initrd_are_copied_out_of_a_normal_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "boot" / "vmlinuz-2").write_bytes(b"newer kernel")
    (root / "boot" / "initrd.img-2").write_bytes(b"newer initrd")
    kernel, initrd = _boot_files(root)
    assert (kernel, initrd) == ("/boot/vmlinuz-2", "/boot/initrd.img-2")
    inroot.copy_out(root, kernel, tmp_path / "vmlinuz")
    assert (tmp_path / "vmlinuz").read_bytes() == b"newer kernel"


def test_a_root_without_a_kernel_says_what_to_do(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "boot" / "vmlinuz-1").unlink()
    with pytest.raises(BuildError, match="no kernel or initrd in /boot"):
        _boot_files(root)
    (root / "boot" / "initrd.img-1").unlink()
    (root / "boot").rmdir()
    with pytest.raises(BuildError, match="no kernel or initrd in /boot"):
        _boot_files(root)


def test_a_path_climbing_out_by_dot_dot_is_refused_before_anything_is_opened(tmp_path: Path) -> None:
    root, host = make_root(tmp_path), make_host(tmp_path)
    before = snapshot(host)
    with pytest.raises(ValueError, match=r"'\.\.'"):
        inroot.write_file(root, "/../host/keep", b"x", 0o644)
    assert snapshot(host) == before
