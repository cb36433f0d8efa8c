"""Read kiln.yaml and turn every problem into `kiln.yaml:LINE: key.path: what is wrong`.

A spec may come from a pushed branch, so reading it is bounded: the file's size (MAX_BYTES),
the number of '[' and '{' (checked on the text: YAML's scanner is quadratic in flow nesting), the
nesting of nodes (MAX_DEPTH) and the number of nodes with every alias expanded (MAX_NODES: no
billion laughs); an alias inside its own anchor (a cycle) is refused."""

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
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode
from ruamel.yaml.reader import ReaderError

from kiln.errors import SpecError, SpecIssue
from kiln.spec.checks import spec_problems
from kiln.spec.models import Spec

SPEC_FILE = "kiln.yaml"
MAX_BYTES = 32 * 1024  # a kiln.yaml is a few KiB (and ruamel reads about 50 KiB a second)
MAX_BRACKETS = 512  # '[' and '{' in the whole text
MAX_DEPTH = 32  # nodes inside each other, block or flow
MAX_NODES = 20_000  # nodes with every alias expanded


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
    with path.open("rb") as f:
        raw = f.read(MAX_BYTES + 1)  # never more: the size is refused below
    return LoadedSpec(parse_spec(raw.decode("utf-8", errors="replace"), path.name), path.resolve(), hashlib.sha256(raw).hexdigest())


class _Bounded(Exception):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line, self.problem = line, problem


def _bracket_check(text: str) -> None:
    """Refuse more than MAX_BRACKETS '[' and '{' before the scanner sees them: ruamel's scanner
    costs the depth of flow collections per character, so this bounds it whatever the quoting."""
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        seen += line.count("[") + line.count("{")
        if seen > MAX_BRACKETS:
            raise _Bounded(number, f"more than {MAX_BRACKETS} '[' and '{{' characters; write long lists and "
                                   "mappings in block style (one '- item' or 'key: value' a line)")


class _BoundedComposer(Composer):
    """ruamel's composer, counting every node it composes and every node an alias stands for."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader=loader)
        self.nodes = 0
        self.sizes: dict[int, int] = {}  # id(node) -> its size with aliases expanded
        self.open: set[str] = set()  # anchors whose node is being composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            if event.anchor in self.open:
                raise _Bounded(line, f"the alias *{event.anchor} is used inside its own anchor (a cycle)")
            target = self.anchors.get(event.anchor)
            self.nodes += _size(target, self.sizes) if target is not None else 0
        else:
            self.nodes += 1
            if self.depth >= MAX_DEPTH:
                raise _Bounded(line, f"values nest deeper than {MAX_DEPTH} levels")
        if self.nodes > MAX_NODES:
            raise _Bounded(line, f"the spec expands to more than {MAX_NODES} values (aliases counted as copies)")
        anchor = None if isinstance(event, AliasEvent) else event.anchor
        if anchor is not None:
            self.open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            if anchor is not None:
                self.open.discard(anchor)


def _size(node: Node, memo: dict[int, int]) -> int:
    """Nodes in `node` with aliases expanded (memoized, so linear in the nodes themselves)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    if isinstance(node, SequenceNode):
        size = 1 + sum(_size(child, memo) for child in node.value)
    elif isinstance(node, MappingNode):
        size = 1 + sum(_size(k, memo) + _size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def parse_spec(text: str, filename: str = SPEC_FILE) -> Spec:
    if len(text) > MAX_BYTES or len(text.encode("utf-8", errors="replace")) > MAX_BYTES:
        raise SpecError([SpecIssue(filename, 1, "", f"the file is larger than {MAX_BYTES // 1024} KiB; "
                                                    "a kiln.yaml is far smaller")])
    yaml = YAML(typ="rt")
    yaml.Composer = _BoundedComposer
    try:
        _bracket_check(text)
        tree = yaml.load(text)
    except _Bounded as exc:
        raise SpecError([SpecIssue(filename, exc.line, "", exc.problem)]) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = (exc.problem or exc.context or "not valid YAML").strip()
        raise SpecError([SpecIssue(filename, line, "", f"YAML syntax: {problem}")]) from None
    except ReaderError as exc:  # a control character YAML does not allow (NUL, ESC, ...)
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 1
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise SpecError([SpecIssue(filename, line, "", f"YAML syntax: the character {what} is not allowed in YAML")]) from None
    except YAMLError as exc:  # any other problem ruamel finds without a position
        raise SpecError([SpecIssue(filename, 1, "", f"YAML: {str(exc).splitlines()[0] if str(exc) else 'not valid YAML'}")]) from None
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


def _walk(tree: Any, loc: tuple[str | int, ...]) -> tuple[list[str | int], int]:
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


def _line_of(tree: Any, loc: tuple[str | int, ...]) -> int:
    return _walk(tree, loc)[1]


def _dotted(path: tuple[str | int, ...] | list[str | int]) -> str:
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


def _suggest(path: list[str | int], loc: tuple[str | int, ...]) -> str:
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
