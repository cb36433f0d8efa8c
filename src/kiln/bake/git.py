"""Git: the commit a bake came from and whether the tree was dirty; clean checkouts of a commit
(previews, re-creating a release whose image is gone)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln import process
from kiln.errors import BuildError, UsageError


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


def toplevel(path: Path) -> Path | None:
    """The root of the git work tree holding `path` (None outside git)."""
    top = process.run(("git", "-C", str(path), "rev-parse", "--show-toplevel"))
    return Path(top.stdout.strip()) if top.ok else None


def commit_of(repo: Path, ref: str) -> str:
    found = process.run(("git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
    if not found.ok:
        raise UsageError(f"{ref!r} is not a commit of the git repository at {repo}.",
                         "Give a branch, tag or commit sha (`git log --oneline` lists them).")
    return found.stdout.strip()


@contextmanager
def checkout(repo: Path, commit: str, scratch: Path) -> Iterator[Path]:
    """A clean work tree of `commit` (a detached `git worktree`), removed afterwards. Being a git
    checkout, a bake from it records the commit, and nothing uncommitted can leak into it."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"worktree-{commit[:12]}-{secrets.token_hex(3)}"
    made = process.run(("git", "-C", str(repo), "worktree", "add", "--detach", str(path), commit))
    if not made.ok:
        raise BuildError(f"cannot check out {commit[:12]} from {repo}: {made.stderr.strip()}")
    try:
        yield path
    finally:
        process.run(("git", "-C", str(repo), "worktree", "remove", "--force", str(path)))
