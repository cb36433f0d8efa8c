"""Provenance from git: the commit a bake came from and whether the tree was dirty."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln import process


@dataclass(frozen=True)
class GitState:
    commit: str | None  # None outside a git repository
    dirty: bool


def git_state(path: Path) -> GitState:
    head = process.run(("git", "-C", str(path), "rev-parse", "HEAD"))
    if not head.ok:
        return GitState(None, False)
    status = process.run(("git", "-C", str(path), "status", "--porcelain", "--", "."))
    return GitState(head.stdout.strip(), bool(status.stdout.strip()))
