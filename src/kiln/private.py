"""Files and directories only their owner may read: KILN_HOME (0700), the ledger, CI output,
secrets and the git hook's ledger URL (0600). Umask can only narrow these modes further."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path` as a directory, creating it and each missing parent readable by its owner only
    (0700: KILN_HOME holds the ledger, secrets and CI output). Existing directories are left as
    they are."""
    missing = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
    return path


def private_file(path: Path) -> Path:
    """Create `path` (empty) readable by its owner only (0600) if it is missing, in a private
    directory; an existing file of ours readable by others is narrowed to 0600 (another user's
    file, say a ledger shared through a group, is left as it is)."""
    private_dir(path.parent)
    if path.exists():
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.getuid():  # another user's (a shared ledger): theirs to set
            path.chmod(0o600)
        return path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by its owner only (0600, in a 0700 directory if one is
    made), replacing it atomically."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
