"""kiln.bake.inputs: an image's identity is a hash over every input."""

from __future__ import annotations

import dataclasses

import pytest

from kiln.bake.context import ContextFile
from kiln.bake.inputs import app_inputs_hash, base_inputs_hash, render_dockerfile
from kiln.spec.models import Base

FILES = [ContextFile("app.py", 0o644, "a" * 64), ContextFile("bin/run", 0o755, "b" * 64)]
DOCKERFILE = "ARG KILN_BASE\nFROM ${KILN_BASE}\nCOPY . /app\n"
ARGS = {"VERSION": "1", "MODE": "prod"}
BASE = "sha256:" + "c" * 64


def h(files=FILES, dockerfile=DOCKERFILE, args=ARGS, base=BASE):
    return app_inputs_hash(list(files), dockerfile, dict(args), base)


def test_app_hash_depends_on_values_not_on_objects():
    # Equal inputs built anew (other objects, another dict) give the same hash.
    copies = [ContextFile(f.path, f.mode, f.digest) for f in FILES]
    assert h(files=copies, args={"VERSION": "1", "MODE": "prod"}) == h()


def test_app_hash_ignores_build_arg_order():
    assert h(args={"MODE": "prod", "VERSION": "1"}) == h()


@pytest.mark.parametrize(
    "changed",
    [
        {"files": [dataclasses.replace(FILES[0], digest="d" * 64), FILES[1]]},
        {"files": [dataclasses.replace(FILES[0], mode=0o755), FILES[1]]},
        {"files": [dataclasses.replace(FILES[0], path="main.py"), FILES[1]]},
        {"files": FILES[:1]},
        {"files": FILES + [ContextFile("new.txt", 0o644, "e" * 64)]},
        {"dockerfile": DOCKERFILE + "RUN true\n"},
        {"args": {**ARGS, "VERSION": "2"}},
        {"args": {**ARGS, "EXTRA": ""}},
        {"args": {}},
        {"base": "sha256:" + "f" * 64},
    ],
    ids=["file-digest", "file-mode", "file-path", "file-removed", "file-added", "dockerfile", "arg-value",
         "arg-added", "no-args", "base"],
)
def test_app_hash_changes_with_any_input(changed):
    assert h(**changed) != h()


def test_base_hash_ignores_package_order_and_duplicates():
    a = Base(packages=("python3", "curl"))
    b = Base(packages=("curl", "python3", "curl"))
    assert base_inputs_hash(a) == base_inputs_hash(b)


@pytest.mark.parametrize(
    "other",
    [Base(packages=("python3",)), Base(packages=("python3", "curl", "git")),
     Base(suite="trixie", packages=("python3", "curl")),
     Base(mirror="http://mirror.example/debian", packages=("python3", "curl"))],
)
def test_base_hash_changes_with_suite_packages_and_mirror(other):
    assert base_inputs_hash(other) != base_inputs_hash(Base(packages=("python3", "curl")))


def test_base_and_app_hashes_are_pinned():
    # Images are reused by these values: a changed hash function must fail here (see test_golden).
    assert base_inputs_hash(Base()) == "77fbe3c82bea0ff3873f25852eb435d1d81805938611f3c4fd6f8bc5b80e0cdc"
    assert h() == "9b1e2149cdf34443b848af929f3229878dba29094df5f6825355e685b2df2d07"


def test_render_dockerfile():
    assert render_dockerfile(("COPY . /app  ", "RUN pip install -r /app/requirements.txt\n")) == (
        "ARG KILN_BASE\n"
        "FROM ${KILN_BASE}\n"
        "COPY . /app\n"
        "RUN pip install -r /app/requirements.txt\n"
    )


def test_render_dockerfile_without_steps():
    assert render_dockerfile(()) == "ARG KILN_BASE\nFROM ${KILN_BASE}\n"
