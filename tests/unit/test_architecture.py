"""The house rules a reader of ARCHITECTURE.md relies on, checked on the source itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "kiln"


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts and p.name != "__init__.py")


def test_the_code_map_lists_every_module_and_stands_on_its_own():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(SRC)) for p in _modules() if f"`{p.relative_to(SRC)}`" not in text]
    assert missing == []
    assert re.findall(r"\.\./", text) == []  # no reference outside the repository


def test_the_docker_sdk_is_used_only_under_providers():
    leaks = [str(p.relative_to(SRC)) for p in _modules()
             if p.parent.name != "providers" and re.search(r"^\s*(import docker|from docker\b)", p.read_text(), re.M)]
    assert leaks == []


def test_processes_are_started_only_by_process_py():
    pattern = re.compile(r"\bsubprocess\b|\bos\.(kill|system|popen|exec\w*|spawn\w*)\(")
    leaks = [str(p.relative_to(SRC)) for p in _modules()
             if p.name != "process.py" and pattern.search(p.read_text())
             and not (p.name == "faults.py")]  # faults.py: kiln SIGKILLs itself at a named point (crash tests)
    assert leaks == []


def test_no_module_imports_itself_round_a_cycle():
    """Strongly connected components of the import graph (imports inside functions count; those
    only for type checkers do not): every one must be a single module. Layers and forbidden
    imports are import-linter's contracts (pyproject.toml, run by scripts/test.sh)."""
    import grimp

    graph = grimp.build_graph("kiln", exclude_type_checking_imports=True)
    seen: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        seen[module] = low[module] = len(seen)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in seen:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], seen[imported])
        if low[module] == seen[module]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == module:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    for module in sorted(graph.modules):
        if module not in seen:
            visit(module)
    assert cycles == []
