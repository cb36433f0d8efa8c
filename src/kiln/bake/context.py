"""The build context: which files are sent to the builder (honouring .dockerignore) and their hash.

Pure apart from reading the files; the same list is both hashed and sent, so the inputs hash
names exactly what was baked.
"""

from __future__ import annotations

import fnmatch
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


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's rules: Go filepath.Match per segment, plus '**' for any number of segments."""
    pattern = os.path.normpath(pattern.strip("/")).replace(os.sep, "/")
    out = ""
    for i, seg in enumerate(pattern.split("/")):
        if seg == "**":
            out += "(?:.*/)?" if i == 0 else "(?:/.*)?"
            continue
        part = fnmatch.translate(seg).removeprefix("(?s:").removesuffix(")\\Z")
        part = part.replace(".*", "[^/]*")
        out += ("/" if out and not out.endswith("/") and not out.endswith("?") else "") + part
    return re.compile(f"^{out}(?:/.*)?$")


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
            if not is_ignored(rel, patterns) and not os.path.islink(os.path.join(dirpath, name)):
                files.append(rel)
    return sorted(files)


def hash_context(root: Path, paths: list[str]) -> list[ContextFile]:
    out = []
    for rel in paths:
        full = root / rel
        digest = hashlib.sha256(full.read_bytes()).hexdigest()
        out.append(ContextFile(rel, full.stat().st_mode & 0o777, digest))
    return out
