"""Git for pipeline runs (through the process runner): which commit a ref names, and a clean
clone of that commit. A clone, not a worktree: the repository may be a bare one receiving pushes
(or a URL), and a run must leave nothing in it."""

from __future__ import annotations

import shutil
from pathlib import Path

from kiln import process
from kiln.errors import PipelineError


def _git(*args: str, cwd: Path | None = None, timeout: float = 300) -> process.Result:
    return process.run(("git", *args), cwd=cwd, timeout=timeout)


def repo_root(path: Path) -> Path:
    """The repository holding `path`: a work tree's top level, or a bare repository itself."""
    top = _git("-C", str(path), "rev-parse", "--show-toplevel")
    if top.ok and top.stdout.strip():
        return Path(top.stdout.strip())
    bare = _git("-C", str(path), "rev-parse", "--is-bare-repository")
    if bare.ok and bare.stdout.strip() == "true":
        gitdir = _git("-C", str(path), "rev-parse", "--absolute-git-dir")
        return Path(gitdir.stdout.strip())
    raise PipelineError(f"{path} is not inside a git repository.",
                        "`kiln ci run` runs committed code: run it in a git repository, or pass --repo.")


def resolve_ref(repo: str, ref: str) -> tuple[str, str]:
    """(full ref name, commit sha) of a branch, tag, full ref or commit in a local repository."""
    full = _git("-C", repo, "rev-parse", "--symbolic-full-name", ref)
    name = full.stdout.strip() if full.ok and full.stdout.strip().startswith("refs/") else ref
    commit = _git("-C", repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if not commit.ok:
        raise PipelineError(f"{ref!r} is not a branch, tag or commit of {repo}.",
                            "Give one that exists (`git log --oneline`, `git branch -a`).")
    return name, commit.stdout.strip()


def checkout(repo: str, commit: str, into: Path) -> Path:
    """A fresh clone of `repo` at `commit` in `into` (which must not exist)."""
    into.parent.mkdir(parents=True, exist_ok=True)
    cloned = _git("clone", "--quiet", "--no-checkout", repo, str(into))
    if not cloned.ok:
        raise PipelineError(f"cannot clone {repo}: {cloned.stderr.strip()[-300:]}",
                            "Check that the repository exists and is readable by this user.")
    done = _git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit, cwd=into)
    if not done.ok:
        fetched = _git("fetch", "--quiet", "origin", commit, cwd=into)
        done = _git("checkout", "--quiet", "--detach", commit, cwd=into) if fetched.ok else done
    if not done.ok:
        raise PipelineError(f"cannot check out {commit[:12]} from {repo}: {done.stderr.strip()[-300:]}")
    return into


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
