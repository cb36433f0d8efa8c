"""Read kiln.yaml and turn every problem into `kiln.yaml:LINE: key.path: what is wrong`."""

from __future__ import annotations

import difflib
import hashlib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from kiln.errors import SpecError, SpecIssue
from kiln.spec.checks import spec_problems
from kiln.spec.models import Spec

SPEC_FILE = "kiln.yaml"


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    path: Path  # the kiln.yaml file
    digest: str  # sha256 of the file's bytes

    @property
    def root(self) -> Path:
        return self.path.parent


def find_spec(directory: Path) -> Path:
    path = directory / SPEC_FILE if directory.is_dir() else directory
    if not path.is_file():
        raise SpecError([SpecIssue(str(path), None, "", "no spec here; run `kiln init` to write a starter kiln.yaml, or pass --file")])
    return path


def load_spec(path: Path) -> LoadedSpec:
    raw = path.read_bytes()
    return LoadedSpec(parse_spec(raw.decode("utf-8", errors="replace"), path.name), path.resolve(), hashlib.sha256(raw).hexdigest())


def parse_spec(text: str, filename: str = SPEC_FILE) -> Spec:
    try:
        tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = (exc.problem or exc.context or "not valid YAML").strip()
        raise SpecError([SpecIssue(filename, line, "", f"YAML syntax: {problem}")]) from None
    if not isinstance(tree, CommentedMap):
        raise SpecError([SpecIssue(filename, 1, "", "the spec must be a mapping with keys app, build, services, environments")])
    try:
        spec = Spec.model_validate(_plain(tree))
    except ValidationError as exc:
        issues = [_issue(filename, tree, err) for err in exc.errors()]
        raise SpecError(sorted(issues, key=lambda i: i.line or 0)) from None
    issues = [SpecIssue(filename, _line_of(tree, loc), _dotted(loc), msg) for loc, msg in spec_problems(spec)]
    if issues:
        raise SpecError(issues)
    return spec


_WORDS = (("valid tuple", "list"), ("Tuple", "List"), ("Dictionary", "Mapping"), ("valid dictionary", "mapping"))


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _walk(tree: Any, loc: tuple) -> tuple[list[str | int], int]:
    """The part of `loc` that names real keys (pydantic adds type tags) and the last line seen."""
    node, line, path = tree, 1, []
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
            path.append(key)
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
            path.append(key)
        elif isinstance(node, CommentedMap) and isinstance(key, str) and key.isidentifier():
            path.append(key)  # a missing key: report it at its parent's line
            node = None
        elif not isinstance(key, str) or "[" in key or key in ("str", "int", "bool", "float", "none"):
            continue  # union branch tags such as 'tuple[str, ...]'
        else:
            break
    return path, line


def _line_of(tree: Any, loc: tuple) -> int:
    return _walk(tree, loc)[1]


def _dotted(path: tuple | list) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _issue(filename: str, tree: Any, err: Mapping[str, Any]) -> SpecIssue:
    path, line = _walk(tree, err["loc"])
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        problem = "required key is missing"
    elif kind == "extra_forbidden":
        problem = "unknown key" + _suggest(path, err["loc"])
    else:
        problem = msg.removeprefix("Value error, ")
        for theirs, ours in _WORDS:
            problem = problem.replace(theirs, ours)
        value = err.get("input")
        if kind != "value_error" and not isinstance(value, dict | list):
            problem += f" (got {value!r})"
    return SpecIssue(filename, line, _dotted(path), problem)


def _suggest(path: list, loc: tuple) -> str:
    """'did you mean …' for an unknown key, from the model that owns it."""
    node: Any = Spec
    for key in path[:-1]:
        node = _step(node, key)
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return ""
    known = list(node.model_fields)
    close = difflib.get_close_matches(str(path[-1]), known, n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; known keys here: {', '.join(known)}"


def _step(node: Any, key: str | int) -> Any:
    """The type one key below `node`: a model's field, a dict's value, an Optional's model."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(str(key))
        return _unwrap(field.annotation) if field else None
    args: tuple[Any, ...] = getattr(node, "__args__", ())
    if getattr(node, "__origin__", None) is dict and len(args) == 2:
        return _unwrap(args[1])
    return None


def _unwrap(ann: Any) -> Any:
    if not isinstance(ann, types.UnionType) and getattr(ann, "__origin__", None) is not Union:
        return ann
    for arg in ann.__args__:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg  # Model | None
    return ann
