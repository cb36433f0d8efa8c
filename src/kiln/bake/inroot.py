"""Write and read files of an unpacked image's filesystem (a VM bake's root) without leaving it.

The root is what a build's steps left, and those steps may come from a pushed commit: they can
leave a symlink such as `/etc/systemd -> /etc/systemd` or `/boot -> /boot`. kiln bakes as root,
so a path followed through such a link would write kiln's units onto the host, or bake the host's
kernel into the image. Here every path is walked one component at a time from a descriptor of
the root, each directory opened relative to the one before with O_NOFOLLOW (openat(2)), so no
symlink is ever followed: a symlink or a non-directory on the way is a BuildError naming it.
Only a path's last component may be replaced: a symlink there is removed and the file or link
made in its place, inside the root.

Paths are absolute as the image sees them ("/etc/fstab"), and hold no "." or ".." components."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kiln.errors import BuildError

DIR_MODE = 0o755  # directories kiln makes: systemd and the services read what lies below them
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024**2
_BUILD = "the build's steps (build.steps, or its Dockerfile)"
_LEAVE_A_FILE = "Leave a regular file at {} in " + _BUILD + ", then bake again."


def write_file(root: Path, path: str, data: bytes, mode: int) -> None:
    """`data` as the image's file `path` with mode `mode`, its missing directories made."""
    with _failing("write", path), _parent(root, path, "writes", create=True) as (fd, leaf):
        if _kind_at(fd, leaf) == "a symlink":
            os.unlink(leaf, dir_fd=fd)
        out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        with open(out, "wb") as fh:
            os.fchmod(out, mode)  # O_CREAT's mode passes through the umask, and a file already there keeps its own
            fh.write(data)


def symlink(root: Path, path: str, target: str) -> None:
    """The image's `path` made a symlink to `target` (which is not resolved: it means the path
    in the booted image), in place of whatever non-directory was there."""
    with _failing("make the link", path), _parent(root, path, "writes", create=True) as (fd, leaf):
        if _kind_at(fd, leaf) is not None:
            os.unlink(leaf, dir_fd=fd)
        os.symlink(target, leaf, dir_fd=fd)


def listdir(root: Path, path: str) -> list[str]:
    """The names in the image's directory `path`; none when it does not exist."""
    with _failing("list", path):
        try:
            with _directory(root, path, "reads", create=False) as fd:
                return os.listdir(fd)
        except FileNotFoundError:
            return []


def copy_out(root: Path, path: str, dest: Path) -> None:
    """The image's regular file `path` copied to `dest` on the host."""
    src = _open_regular(root, path)
    with open(src, "rb") as fh, open(dest, "wb") as out:
        shutil.copyfileobj(fh, out, _CHUNK)


def _open_regular(root: Path, path: str) -> int:
    """A descriptor of the image's regular file `path`, for reading."""
    with _failing("read", path), _parent(root, path, "reads", create=False) as (fd, leaf):
        if _kind_at(fd, leaf) == "a symlink":
            raise BuildError(f"{path} is a symlink in the image's filesystem (to {os.readlink(leaf, dir_fd=fd)}); kiln "
                             "reads only regular files out of an image, never through a link.", _LEAVE_A_FILE.format(path))
        # O_NOFOLLOW: nothing put a link there since; O_NONBLOCK: a FIFO must not wait for a writer.
        src = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    mode = os.fstat(src).st_mode
    if not stat.S_ISREG(mode):  # a device node would read one of the host's devices
        os.close(src)
        raise BuildError(f"{path} is {_kind(mode)} in the image's filesystem, not a regular file; kiln reads only "
                         "regular files out of an image.", _LEAVE_A_FILE.format(path))
    return src


def _components(path: str) -> list[str]:
    names = [name for name in path.split("/") if name]
    bad = [name for name in names if name in (".", "..")]
    if bad or not names:  # ".." from the root's descriptor is the folder holding the root
        raise ValueError(f"{path!r} is not a plain path inside an image (it holds {bad[0]!r})" if bad
                         else f"{path!r} names no file inside an image")
    return names


@contextmanager
def _parent(root: Path, path: str, verb: str, create: bool) -> Iterator[tuple[int, str]]:
    """A descriptor of the directory holding `path`, reached through real directories, and the
    name of `path` in it."""
    *folders, leaf = _components(path)
    with _walk(root, folders, path, verb, create) as fd:
        yield fd, leaf


@contextmanager
def _directory(root: Path, path: str, verb: str, create: bool) -> Iterator[int]:
    with _walk(root, _components(path), path, verb, create) as fd:
        yield fd


@contextmanager
def _walk(root: Path, folders: list[str], path: str, verb: str, create: bool) -> Iterator[int]:
    """A descriptor of root/folders[0]/folders[1]/…, each opened in the one before without
    following a symlink; `path` and `verb` ("writes", "reads") are for the error."""
    fd = os.open(root, _DIR)
    try:
        for depth, name in enumerate(folders):
            child = _open_folder(fd, name, "/" + "/".join(folders[:depth + 1]), path, verb, create)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _open_folder(parent: int, name: str, inner: str, path: str, verb: str, create: bool) -> int:
    try:
        return os.open(name, _DIR, dir_fd=parent)
    except NotADirectoryError:  # O_NOFOLLOW | O_DIRECTORY: a symlink lands here too
        raise _not_a_folder(parent, name, inner, path, verb) from None
    except FileNotFoundError:
        if not create:
            raise
    os.mkdir(name, DIR_MODE, dir_fd=parent)
    made = os.open(name, _DIR, dir_fd=parent)
    os.fchmod(made, DIR_MODE)  # mkdir's mode passes through the umask
    return made


def _not_a_folder(parent: int, name: str, inner: str, path: str, verb: str) -> BuildError:
    kind = _kind_at(parent, name)
    if kind == "a symlink":
        return BuildError(f"{inner} is a symlink in the image's filesystem (to {os.readlink(name, dir_fd=parent)}); kiln "
                          f"{verb} {path} only through real directories of the image, so that a bake never reaches "
                          "outside it.",
                          f"Do not leave a symlink at {inner} in {_BUILD}: make it a real directory (or remove it), "
                          "then bake again.")
    return BuildError(f"{inner} is {kind} in the image's filesystem, not a directory; kiln {verb} {path} through it.",
                      f"Make {inner} a directory in {_BUILD} (or remove it), then bake again.")


def _kind_at(parent: int, name: str) -> str | None:
    """What `name` in the directory `parent` is ("a symlink", "a directory"…), not following it; None: nothing."""
    try:
        return _kind(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((text for test, text in kinds if test(mode)), "a device node")


@contextmanager
def _failing(action: str, path: str) -> Iterator[None]:
    """An OSError met doing `action` on `path` as a BuildError (what kiln itself refuses already is one)."""
    try:
        yield
    except OSError as exc:
        raise BuildError(f"cannot {action} {path} in the image's filesystem: {exc.strerror}.") from None
