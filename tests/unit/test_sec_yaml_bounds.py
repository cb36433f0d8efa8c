"""Issue 15, item 9: reading a kiln.yaml (which may come from a pushed branch) is bounded: a
billion laughs, a cycle, deep nesting, a huge file or a flood of brackets is a clean SpecError
(exit 2, file:line), quickly and with little memory.

The billion laughs are read in a child process with a deadline and a memory cap (issue 25,
finding 10b): without the node bound, their expansion would hang the suite and fill memory;
it fails the test within seconds instead."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

import kiln
from kiln.errors import SpecError
from kiln.spec.loader import MAX_BRACKETS, MAX_BYTES, MAX_DEPTH, MAX_NODES, load_spec, parse_spec

LAUGHS = """\
app: shop
build: {steps: [COPY app.py /app.py]}
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
services: {web: {port: 8000}}
environments: {production: {port: 8080}}
"""


def _issue(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "kiln.yaml")
    assert caught.value.exit_code == 2 and len(caught.value.issues) == 1
    return str(caught.value.issues[0])


DEADLINE = 10.0  # seconds a child may take: a bounded read takes well under one (startup included)
MEMORY = 512 * 1024**2  # the child's address space: the interpreter and kiln need under 64 MiB
# Set first in each child (not by preexec_fn, which is unsafe in a process with threads).
CAP = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY}, {MEMORY}))\n"
# Reads stdin as a kiln.yaml and prints its issues and its peak allocation.
MEASURE = """
import json, sys, tracemalloc
from kiln.errors import SpecError
from kiln.spec.loader import parse_spec
text = sys.stdin.read()
tracemalloc.start()
try:
    parse_spec(text, "kiln.yaml")
    issues = []
except SpecError as exc:
    issues = [str(issue) for issue in exc.issues]
print(json.dumps({"issues": issues, "peak": tracemalloc.get_traced_memory()[1]}))
"""
CLI = "import runpy; runpy.run_module('kiln', run_name='__main__', alter_sys=True)\n"  # as `python -m kiln`


def in_child(code: str, args: tuple[str, ...] = (), stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`code` run by this Python with this kiln (sys.argv[1:] = `args`), within DEADLINE seconds
    and MEMORY bytes: a missing bound fails the test in seconds instead of hanging the suite."""
    env = {"PYTHONPATH": str(Path(kiln.__file__).resolve().parents[1]), "NO_COLOR": "1", "COLUMNS": "200"}
    try:
        return subprocess.run([sys.executable, "-c", CAP + code, *args], input=stdin, env=env, capture_output=True,
                              text=True, timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading the spec took more than {DEADLINE:g}s: a bound is missing")


def test_a_billion_laughs_is_refused_at_the_alias_quickly_and_with_little_memory():
    child = in_child(MEASURE, stdin=LAUGHS)
    assert child.returncode == 0, child.stderr[-2000:]  # a MemoryError: the expansion ran past MEMORY
    read = json.loads(child.stdout)
    assert read["issues"] == [f"kiln.yaml:7: the spec expands to more than {MAX_NODES} values (aliases counted as copies)"]
    # refused at the alias: little memory; a missing bound is caught by the child's DEADLINE, not by a clock
    assert read["peak"] < 20 * 1024 * 1024


def test_the_cli_exits_2_with_file_and_line(tmp_path: Path):
    (tmp_path / "kiln.yaml").write_text(LAUGHS)
    child = in_child(CLI, ("validate", "--file", str(tmp_path / "kiln.yaml")))
    assert child.returncode == 2, child.stderr[-2000:]
    assert "kiln.yaml:7: the spec expands to more than" in child.stderr and "Traceback" not in child.stderr


def test_an_alias_inside_its_own_anchor_is_a_cycle():
    assert _issue("app: &a [x, *a]\n") == "kiln.yaml:1: the alias *a is used inside its own anchor (a cycle)"
    assert _issue("app: x\nloop: &m\n  k: *m\n") == "kiln.yaml:3: the alias *m is used inside its own anchor (a cycle)"


def test_deep_nesting_is_refused_before_the_recursive_composer():
    block = "app: x\nv:\n" + "".join("  " * i + "- \n" for i in range(1, 60))
    assert _issue(block).endswith(f": values nest deeper than {MAX_DEPTH} levels")
    assert _issue("app: x\nv: " + "[" * 100 + "]" * 100 + "\n") == \
        f"kiln.yaml:2: values nest deeper than {MAX_DEPTH} levels"


def test_a_flood_of_brackets_is_refused_on_the_text_with_its_line():
    text = "app: x\n" + "".join(f"k{i}: [a]\n" for i in range(MAX_BRACKETS)) + "z: {}\n"
    assert _issue(text) == (f"kiln.yaml:{MAX_BRACKETS + 2}: more than {MAX_BRACKETS} '[' and '{{' characters; write "
                            "long lists and mappings in block style (one '- item' or 'key: value' a line)")
    started = time.monotonic()
    _issue("app: x\nv: " + "[" * 50_000)  # quadratic in ruamel's scanner: minutes if it got there
    assert time.monotonic() - started < 1.0


def test_a_huge_file_is_refused_without_reading_it(tmp_path: Path):
    big = tmp_path / "kiln.yaml"
    with big.open("wb") as f:
        f.write(b"app: shop\n")
        f.truncate(10 * 1024 ** 3)  # 10 GiB, sparse: reading it all would take long and fill memory
    tracemalloc.start()
    with pytest.raises(SpecError) as caught:
        load_spec(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert str(caught.value) == f"kiln.yaml:1: the file is larger than {MAX_BYTES // 1024} KiB; a kiln.yaml is far smaller"
    assert peak < 2 * 1024 * 1024


def test_ordinary_anchors_and_merges_still_work():
    spec = parse_spec("""\
app: shop
build: {steps: [COPY app.py /app.py]}
services:
  web: &web
    port: 8000
    public: true
    environment: &env {A: "1", B: "2"}
  worker:
    <<: *web
    port: 8001
    public: false
    environment: *env
environments: {production: {port: 8080}}
""")
    assert spec.services["worker"].port == 8001 and spec.services["worker"].environment == {"A": "1", "B": "2"}
