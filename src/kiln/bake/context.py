"""The build context: which files are sent to the builder (honouring .dockerignore) and their hash.

Pure apart from reading the files; the same list is both hashed and sent, so the inputs hash
names exactly what was baked.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

ALWAYS_IGNORED = (".git", ".kiln")


@dataclass(frozen=True)
class ContextFile:
    path: str  # relative, with '/' separators
    mode: int  # permission bits only
    digest: str  # sha256 of the content


def read_dockerignore(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _segment_regex(seg: str) -> str:
    """One path segment of a Go filepath.Match pattern; nothing in it matches '/'."""
    out, i = "", 0
    while i < len(seg):
        ch = seg[i]
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            close = seg.find("]", i + 2 if seg[i + 1:i + 2] in ("!", "^") else i + 1)
            if close == -1:
                out += re.escape(ch)
            else:
                body = seg[i + 1:close]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                out += f"[{'^/' if negate else ''}{body.replace(chr(92), chr(92) * 2)}]"
                i = close
        elif ch == "\\" and i + 1 < len(seg):
            i += 1
            out += re.escape(seg[i])
        else:
            out += re.escape(ch)
        i += 1
    return out


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's rules: Go filepath.Match per segment, plus '**' for any number of segments.
    A pattern also excludes everything below a directory it matches."""
    segments = os.path.normpath(pattern.strip("/")).replace(os.sep, "/").split("/")
    out = ""
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            out += ".*" if last else "(?:[^/]+/)*"
        else:
            out += _segment_regex(seg) + ("" if last else "/")
    return re.compile(f"^{out}(?:/.*)?$", re.S)


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Last matching pattern wins; '!pattern' re-includes."""
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        if _pattern_regex(pattern).match(path):
            ignored = not negate
    return ignored


def list_context(root: Path, patterns: list[str]) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = sorted(d for d in dirnames if (rel_dir + d) not in ALWAYS_IGNORED)
        for name in filenames:
            rel = rel_dir + name
            full = os.path.join(dirpath, name)
            # Only regular files are baked: not symlinks, and not sockets or FIFOs (which cannot be
            # read, e.g. a router's admin socket when KILN_HOME lies inside the context).
            # .git is a file, not a directory, in a `git worktree` checkout (previews, rebakes).
            if rel in ALWAYS_IGNORED:
                continue
            if not is_ignored(rel, patterns) and not os.path.islink(full) and os.path.isfile(full):
                files.append(rel)
    return sorted(files)


def hash_context(root: Path, paths: list[str]) -> list[ContextFile]:
    out = []
    for rel in paths:
        full = root / rel
        digest = hashlib.sha256(full.read_bytes()).hexdigest()
        out.append(ContextFile(rel, full.stat().st_mode & 0o777, digest))
    return out
