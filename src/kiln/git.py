"""Git, through the process runner: the commit a bake came from and whether its tree was dirty,
the repository holding a path, the commit a ref names, and clean checkouts of a commit (pipeline
runs, previews, re-creating a release whose image is gone).

A checkout is a fresh clone, not a `git worktree`: the repository may be a bare one receiving
pushes (or a URL), and nothing is left in it. A local clone hard-links the objects, so it is
cheap; being a git checkout, a bake from it records the commit, and nothing uncommitted can leak
into it.

Revisions may come from outside (a webhook's `after` and `ref`): `is_commit` and `is_ref` (pure)
accept only full hex object names and ref names valid by `git check-ref-format`'s rules, `clone`
refuses anything else, and every git call that takes a revision puts `--end-of-options` (or a
refusal of a leading '-') before it, so no revision is ever read as an option."""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln import process
from kiln.errors import BuildError, UsageError
from kiln.private import private_dir

TIMEOUT = 300.0  # a clone of a remote repository may take a while; nothing else should
REF_MAX = 1024  # kiln's own bound on a ref name (git sets none)

_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 object names, in full
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")  # controls, space, ~ ^ : ? * [ \\


def is_commit(value: str) -> bool:
    """A full object name: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits. Pure."""
    return _COMMIT.fullmatch(value) is not None


def is_ref(value: str) -> bool:
    """A full ref name (`refs/...`) valid by `git check-ref-format`'s rules (without its options):
    no component empty, starting with '.' or ending with '.lock'; no '..', '@{', control
    characters, space, '~', '^', ':', '?', '*', '[' or '\\'; not ending with '/' or '.'.
    Kiln also requires the `refs/` prefix (so it never starts with '-') and at most REF_MAX
    characters. Pure."""
    if not value.startswith("refs/") or len(value) > REF_MAX:
        return False
    if _REF_FORBIDDEN.search(value) or ".." in value or "@{" in value or value.endswith("."):
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in value.split("/"))


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
    name is `ref` itself when it is no ref (a sha, HEAD on a detached head). A `ref` starting with
    '-' is refused before git sees it (git 2.39's `rev-parse --symbolic-full-name` does not know
    `--end-of-options`)."""
    if ref.startswith("-") or not ref:
        raise UsageError(f"{ref!r} is not a branch, tag or commit name.",
                         "Give a branch, tag, full ref or commit (`git log --oneline`, `git branch -a` list them).")
    full = _git("-C", str(repo), "rev-parse", "--symbolic-full-name", ref)
    name = full.stdout.strip() if full.ok and full.stdout.strip().startswith("refs/") else ref
    commit = _git("-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if not commit.ok:
        raise UsageError(f"{ref!r} is not a branch, tag or commit of the git repository at {repo}.",
                         "Give one that exists (`git log --oneline`, `git branch -a` list them).")
    return name, commit.stdout.strip()


def is_ancestor(repo: str | Path, older: str, newer: str) -> bool:
    """Whether commit `older` is an ancestor of (or equal to) commit `newer` in `repo`; False when
    either is unknown there. Both must be full commit ids."""
    if not (is_commit(older) and is_commit(newer)):
        return False
    return _git("-C", str(repo), "merge-base", "--is-ancestor", "--end-of-options", older, newer).ok


def ref_commit(repo: str | Path, ref: str) -> str | None:
    """The commit a full ref name (`is_ref`) names in `repo`, or None (no such ref, or not a ref)."""
    if not is_ref(ref):
        return None
    found = _git("-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    return found.stdout.strip() if found.ok and is_commit(found.stdout.strip()) else None


def tip(repo: str | Path, ref: str) -> str | None:
    """The commit `ref` names in `repo`: a branch `refs/heads/B` as the repository has it, else
    as its remote `origin` had it when last fetched (a clone that only tracks the branch)."""
    found = ref_commit(repo, ref)
    if found is None and ref.startswith("refs/heads/"):
        found = ref_commit(repo, "refs/remotes/origin/" + ref.removeprefix("refs/heads/"))
    return found


def on_ref(repo: str | Path, ref: str, commit: str) -> bool:
    """Whether `commit` is on `ref` in `repo`: a tag's commit itself, or a branch's tip or one of
    its ancestors. A run's ref says where its commit was pushed; this checks it (a webhook could
    name any ref)."""
    found = tip(repo, ref)
    if found is None or not is_commit(commit):
        return False
    return found == commit if ref.startswith("refs/tags/") else is_ancestor(repo, commit, found)


def default_branch(repo: str | Path) -> tuple[str | None, str]:
    """(the repository's default branch, how it was found), or (None, why not). A bare repository
    (what pushes go to, or a mirror) says it with its HEAD; a work tree with the HEAD of its remote
    `origin` (its own HEAD is only the branch checked out), else a branch `main` or `master`."""
    bare = _git("-C", str(repo), "rev-parse", "--is-bare-repository")
    if not bare.ok:
        return None, f"{repo} is not a git repository kiln can read"
    if bare.stdout.strip() == "true":
        head = _git("-C", str(repo), "symbolic-ref", "--quiet", "HEAD")
        name = head.stdout.strip()
        if head.ok and name.startswith("refs/heads/"):
            return name.removeprefix("refs/heads/"), f"the HEAD of {repo}"
        return None, f"the HEAD of {repo} names no branch"
    origin = _git("-C", str(repo), "symbolic-ref", "--quiet", "refs/remotes/origin/HEAD")
    name = origin.stdout.strip()
    if origin.ok and name.startswith("refs/remotes/origin/"):
        return name.removeprefix("refs/remotes/origin/"), f"the HEAD of {repo}'s remote origin"
    for branch in ("main", "master"):
        if ref_commit(repo, f"refs/heads/{branch}") is not None:
            return branch, f"{repo} has no remote HEAD; its branch {branch}"
    return None, f"{repo} has no remote HEAD and no branch main or master"


def show(repo: str | Path, commit: str, path: str, limit: int) -> str | None:
    """The text of the file `path` at `commit` in `repo` (None when it has no such file), read with
    git, never from a work tree. A file over `limit` bytes is refused before it is read."""
    if not is_commit(commit) or path.startswith("-"):
        raise UsageError(f"refusing to read {path!r} at {commit[:80]!r}: not a full commit id and a path.")
    obj = f"{commit}:{path.removeprefix('./')}"
    size = _git("-C", str(repo), "cat-file", "-s", obj)
    if not size.ok or not size.stdout.strip().isdigit():
        return None
    if int(size.stdout.strip()) > limit:
        raise UsageError(f"{path} at {commit[:12]} is larger than {limit // 1024} KiB.")
    try:
        blob = _git("-C", str(repo), "cat-file", "blob", obj)
    except UnicodeDecodeError:
        raise UsageError(f"{path} at {commit[:12]} is not UTF-8 text.") from None
    return blob.stdout if blob.ok else None


def clone(repo: str | Path, commit: str, into: Path) -> Path:
    """A fresh clone of `repo` (a path or URL) at `commit`, detached, in `into` (which must not
    exist). The caller removes it (`remove`). `commit` must be a full object name (`is_commit`):
    anything else is refused before git runs."""
    if not is_commit(commit):
        raise BuildError(f"refusing to check out {commit[:80]!r}: not a full commit id (40 or 64 hex digits).",
                         "Runs, previews and rebakes name a commit by its full id.")
    private_dir(into.parent)  # checkouts of runs live in KILN_HOME: owner only
    cloned = _git("clone", "--quiet", "--no-checkout", "--end-of-options", str(repo), str(into))
    if not cloned.ok:
        raise BuildError(f"cannot clone {repo}: {cloned.stderr.strip()[-300:]}",
                         "Check that the repository exists and is readable by this user.")
    done = _git("switch", "--quiet", "--detach", "--end-of-options", commit, cwd=into)
    if not done.ok:  # a commit no ref of a remote repository reaches: ask for it by name
        fetched = _git("fetch", "--quiet", "--end-of-options", "origin", commit, cwd=into)
        done = _git("switch", "--quiet", "--detach", "--end-of-options", commit, cwd=into) if fetched.ok else done
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
