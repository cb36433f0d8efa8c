"""Git, through the process runner: the commit a bake came from and whether its tree was dirty,
the repository holding a path, the commit a ref names, and clean checkouts of a commit (pipeline
runs, previews, re-creating a release whose image is gone).

A checkout is a fresh clone, not a `git worktree`: the repository may be a bare one receiving
pushes (or a URL), and nothing is left in it. A local clone hard-links the objects, so it is
cheap; being a git checkout, a bake from it records the commit, and nothing uncommitted can leak
into it."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln import process
from kiln.errors import BuildError, UsageError

TIMEOUT = 300.0  # a clone of a remote repository may take a while; nothing else should


def _git(*args: str, cwd: Path | None = None) -> process.Result:
    return process.run(("git", *args), cwd=cwd, timeout=TIMEOUT)


@dataclass(frozen=True)
class GitState:
    commit: str | None  # None outside a git repository
    dirty: bool


def git_state(path: Path) -> GitState:
    head = _git("-C", str(path), "rev-parse", "HEAD")
    if not head.ok:
        return GitState(None, False)
    status = _git("-C", str(path), "status", "--porcelain", "--", ".")
    return GitState(head.stdout.strip(), bool(status.stdout.strip()))


def root(path: Path) -> Path | None:
    """The repository holding `path`: a work tree's top level, or a bare repository itself
    (None outside git)."""
    top = _git("-C", str(path), "rev-parse", "--show-toplevel")
    if top.ok and top.stdout.strip():
        return Path(top.stdout.strip())
    bare = _git("-C", str(path), "rev-parse", "--is-bare-repository")
    if bare.ok and bare.stdout.strip() == "true":
        gitdir = _git("-C", str(path), "rev-parse", "--absolute-git-dir")
        return Path(gitdir.stdout.strip())
    return None


def repo_root(path: Path) -> Path:
    """`root(path)`, or a UsageError outside git."""
    found = root(path)
    if found is None:
        raise UsageError(f"{path} is not inside a git repository.",
                         "kiln runs committed code here: run it in a git repository, or pass --repo.")
    return found


def resolve_ref(repo: str | Path, ref: str) -> tuple[str, str]:
    """(full ref name, commit sha) of a branch, tag, full ref or commit of a local repository; the
    name is `ref` itself when it is no ref (a sha, HEAD on a detached head)."""
    full = _git("-C", str(repo), "rev-parse", "--symbolic-full-name", ref)
    name = full.stdout.strip() if full.ok and full.stdout.strip().startswith("refs/") else ref
    commit = _git("-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if not commit.ok:
        raise UsageError(f"{ref!r} is not a branch, tag or commit of the git repository at {repo}.",
                         "Give one that exists (`git log --oneline`, `git branch -a` list them).")
    return name, commit.stdout.strip()


def clone(repo: str | Path, commit: str, into: Path) -> Path:
    """A fresh clone of `repo` (a path or URL) at `commit`, detached, in `into` (which must not
    exist). The caller removes it (`remove`)."""
    into.parent.mkdir(parents=True, exist_ok=True)
    cloned = _git("clone", "--quiet", "--no-checkout", str(repo), str(into))
    if not cloned.ok:
        raise BuildError(f"cannot clone {repo}: {cloned.stderr.strip()[-300:]}",
                         "Check that the repository exists and is readable by this user.")
    done = _git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit, cwd=into)
    if not done.ok:  # a commit no ref of a remote repository reaches: ask for it by name
        fetched = _git("fetch", "--quiet", "origin", commit, cwd=into)
        done = _git("checkout", "--quiet", "--detach", commit, cwd=into) if fetched.ok else done
    if not done.ok:
        raise BuildError(f"cannot check out {commit[:12]} from {repo}: {done.stderr.strip()[-300:]}")
    return into


@contextmanager
def checkout(repo: str | Path, commit: str, scratch: Path) -> Iterator[Path]:
    """A clean clone of `commit` in a new directory under `scratch`, removed afterwards."""
    path = scratch / f"checkout-{commit[:12]}-{secrets.token_hex(3)}"
    try:
        yield clone(repo, commit, path)
    finally:
        remove(path)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
