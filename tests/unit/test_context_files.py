"""kiln.bake.context: which files go into the build context (Docker's .dockerignore rules) and their hash."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from kiln.bake.context import ContextFile, hash_context, is_ignored, list_context, read_dockerignore


@pytest.mark.parametrize(
    ("pattern", "path", "ignored"),
    [
        # a plain glob matches at the top level only
        ("*.pyc", "a.pyc", True),
        ("*.pyc", "pkg/a.pyc", False),
        ("*.pyc", "a.py", False),
        # '**' matches any number of directories, including none
        ("**/*.pyc", "a.pyc", True),
        ("**/*.pyc", "pkg/sub/a.pyc", True),
        ("**/__pycache__", "__pycache__/a.pyc", True),
        ("**/__pycache__", "pkg/sub/__pycache__/a.pyc", True),
        ("**/__pycache__", "pkg/not__pycache__/a.pyc", False),
        # a directory pattern excludes everything below it, with or without a trailing slash
        ("build", "build/out/app.bin", True),
        ("build/", "build/app.bin", True),
        ("build", "src/build/app.bin", False),
        ("build", "buildx", False),
        ("build", "build.txt", False),
        # leading '/' and './' are cleaned away
        ("/secret.txt", "secret.txt", True),
        ("./secret.txt", "secret.txt", True),
        # '*' does not cross a directory boundary
        ("src/*.py", "src/a.py", True),
        ("src/*.py", "src/sub/a.py", False),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "a/b/c", False),
        ("*", "any/depth/file", True),
        ("docs/**", "docs/a/b.md", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("?.txt", "a.txt", True),
        ("?.txt", "ab.txt", False),
        ("[ab].txt", "b.txt", True),
        ("[ab].txt", "c.txt", False),
    ],
)
def test_pattern(pattern, path, ignored):
    assert is_ignored(path, [pattern]) is ignored


@pytest.mark.parametrize(("pattern", "path"), [("a?b", "a/b"), ("a[!x]b", "a/b")])
def test_single_character_wildcards_do_not_match_a_separator(pattern, path):
    assert is_ignored(path, [pattern]) is False


@pytest.mark.parametrize("path", ["ab", "a/xb"])
def test_middle_double_star_keeps_segment_boundaries(path):
    assert is_ignored(path, ["a/**/b"]) is False


@pytest.mark.parametrize("path", ["a.txt", "x/a.txt"])
def test_lone_double_star_matches_everything(path):
    assert is_ignored(path, ["**"]) is True


def test_no_patterns_ignores_nothing():
    assert is_ignored("anything/at/all", []) is False


def test_negation_re_includes():
    patterns = ["*.md", "!README.md"]
    assert is_ignored("NOTES.md", patterns) is True
    assert is_ignored("README.md", patterns) is False


def test_last_match_wins():
    assert is_ignored("README.md", ["!README.md", "*.md"]) is True
    assert is_ignored("README.md", ["*.md", "!README.md", "README.md"]) is True


def test_allowlist_idiom():
    patterns = ["*", "!src", "src/**/*.pyc"]
    assert is_ignored("Makefile", patterns) is True
    assert is_ignored("src/app.py", patterns) is False
    assert is_ignored("src/pkg/app.pyc", patterns) is True


def _write(root, rel, text="x", mode=0o644):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_read_dockerignore_skips_comments_and_blanks(tmp_path):
    (tmp_path / ".dockerignore").write_text("# comment\n\n  *.pyc  \n!keep.pyc\n   # indented comment\n")
    assert read_dockerignore(tmp_path) == ["*.pyc", "!keep.pyc"]


def test_read_dockerignore_without_a_file(tmp_path):
    assert read_dockerignore(tmp_path) == []


def test_list_context(tmp_path):
    for rel in ["app.py", "a.pyc", "keep.pyc", "pkg/mod.py", "pkg/mod.pyc", "pkg/__pycache__/mod.cpython-311.pyc",
                "__pycache__/x.pyc", ".git/config", ".git/objects/ab/cd", ".kiln/state", "build/out.bin",
                "z/last.txt", "Dockerfile", "sub/.gitignore"]:
        _write(tmp_path, rel)
    (tmp_path / ".dockerignore").write_text("*.pyc\n!keep.pyc\n**/__pycache__\nbuild\n")
    patterns = read_dockerignore(tmp_path)
    files = list_context(tmp_path, patterns)
    assert files == [".dockerignore", "Dockerfile", "app.py", "keep.pyc", "pkg/mod.py", "pkg/mod.pyc",
                     "sub/.gitignore", "z/last.txt"]
    assert files == sorted(files)


def test_list_context_skips_symlinks(tmp_path):
    _write(tmp_path, "real.txt")
    os.symlink(tmp_path / "real.txt", tmp_path / "link.txt")
    assert list_context(tmp_path, []) == ["real.txt"]


def test_list_context_skips_a_git_file_as_in_a_worktree(tmp_path):
    _write(tmp_path, "app.py")
    _write(tmp_path, ".git", "gitdir: /elsewhere/.git/worktrees/x\n")
    assert list_context(tmp_path, []) == ["app.py"]


def test_list_context_skips_sockets_and_fifos(tmp_path):
    _write(tmp_path, "real.txt")
    os.mkfifo(tmp_path / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:  # e.g. a router's admin socket under KILN_HOME
        sock.bind(str(tmp_path / "admin.sock"))
        assert list_context(tmp_path, []) == ["real.txt"]


def test_hash_context_records_path_mode_and_content(tmp_path):
    _write(tmp_path, "app.py", "print(1)\n", 0o644)
    _write(tmp_path, "bin/run", "#!/bin/sh\n", 0o755)
    files = hash_context(tmp_path, ["app.py", "bin/run"])
    assert files == [
        ContextFile("app.py", 0o644, hashlib.sha256(b"print(1)\n").hexdigest()),
        ContextFile("bin/run", 0o755, hashlib.sha256(b"#!/bin/sh\n").hexdigest()),
    ]


def test_hash_context_changes_with_content(tmp_path):
    _write(tmp_path, "app.py", "print(1)\n")
    before = hash_context(tmp_path, ["app.py"])
    _write(tmp_path, "app.py", "print(2)\n")
    after = hash_context(tmp_path, ["app.py"])
    assert before[0].digest != after[0].digest and before[0].mode == after[0].mode


def test_hash_context_changes_with_mode(tmp_path):
    _write(tmp_path, "run.sh", "echo hi\n", 0o644)
    before = hash_context(tmp_path, ["run.sh"])
    (tmp_path / "run.sh").chmod(0o755)
    after = hash_context(tmp_path, ["run.sh"])
    assert before[0].digest == after[0].digest
    assert (before[0].mode, after[0].mode) == (0o644, 0o755)
