"""kiln.git against real (temporary) repositories: state, root, refs and clean checkouts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln import git
from kiln.errors import BuildError, UsageError


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "app"
    path.mkdir()
    sh(path, "init", "-q", "-b", "main")
    (path / "app.txt").write_text("one\n")
    (path / "sub").mkdir()
    sh(path, "add", "-A")
    sh(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    sh(path, "tag", "v1")
    (path / "app.txt").write_text("two\n")
    sh(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "two")
    return path


def test_state_root_and_refs(repo: Path, tmp_path: Path):
    head = sh(repo, "rev-parse", "HEAD")
    assert git.git_state(repo) == git.GitState(head, False)
    (repo / "app.txt").write_text("dirty\n")
    assert git.git_state(repo) == git.GitState(head, True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert git.git_state(outside) == git.GitState(None, False)

    assert git.root(repo / "sub") == repo.resolve()
    assert git.root(outside) is None
    with pytest.raises(UsageError, match="not inside a git repository"):
        git.repo_root(outside)

    assert git.resolve_ref(repo, "main") == ("refs/heads/main", head)
    assert git.resolve_ref(repo, "v1") == ("refs/tags/v1", sh(repo, "rev-parse", "v1^{commit}"))
    assert git.resolve_ref(str(repo), head[:10]) == (head[:10], head)
    with pytest.raises(UsageError, match="'nope' is not a branch, tag or commit"):
        git.resolve_ref(repo, "nope")


def test_a_bare_repository_is_its_own_root(repo: Path, tmp_path: Path):
    bare = tmp_path / "app.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    assert git.root(bare) == bare.resolve()
    assert git.repo_root(bare) == bare.resolve()


def test_checkout_is_a_clean_clone_removed_afterwards(repo: Path, tmp_path: Path):
    first = sh(repo, "rev-parse", "v1^{commit}")
    (repo / "uncommitted.txt").write_text("never in a checkout\n")
    with git.checkout(repo, first, tmp_path / "scratch") as tree:
        assert (tree / "app.txt").read_text() == "one\n"
        assert not (tree / "uncommitted.txt").exists()
        assert git.git_state(tree) == git.GitState(first, False)
    assert not tree.exists()
    assert sh(repo, "worktree", "list").count("\n") == 0  # nothing left in the repository
    assert sh(repo, "status", "--porcelain") == "?? uncommitted.txt"


def test_clone_from_a_bare_repository_and_its_failures(repo: Path, tmp_path: Path):
    bare = tmp_path / "app.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    head = sh(repo, "rev-parse", "HEAD")
    work = git.clone(str(bare), head, tmp_path / "work" / "run-1")
    assert (work / "app.txt").read_text() == "two\n"
    git.remove(work)
    assert not work.exists()
    with pytest.raises(BuildError, match="cannot clone"):
        git.clone(str(tmp_path / "missing"), head, tmp_path / "work" / "run-2")
    with pytest.raises(BuildError, match="cannot check out 000000000000"):
        git.clone(str(bare), "0" * 40, tmp_path / "work" / "run-3")
