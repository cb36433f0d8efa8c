"""Issue 15, item 5: debootstrap (run as root, with the spec's mirror) verifies every Release
file against Debian's archive keyring, and nothing from the spec can pass for one of its options;
the base's inputs hash is unchanged (verifying changes no byte of a good base)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.bake.base import KEYRING, debootstrap_argv
from kiln.bake.inputs import base_inputs_hash
from kiln.errors import SpecError
from kiln.spec.loader import parse_spec
from kiln.spec.models import Base


def test_the_argv_forces_signature_checks_against_debians_keyring():
    base = Base(suite="bookworm", packages=("python3", "curl", "python3"), mirror="http://mirror.example/debian")
    assert KEYRING == "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert debootstrap_argv(base, Path("/scratch/rootfs")) == [
        "debootstrap", "--variant=minbase", "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
        "--force-check-gpg", "--include=curl,python3", "bookworm", "/scratch/rootfs", "http://mirror.example/debian"]
    assert "--no-check-gpg" not in debootstrap_argv(Base(), Path("/r"))


def test_the_inputs_hash_of_a_base_is_unchanged():
    # the value before item 5: a change would rebake every base (and every app image on it)
    assert base_inputs_hash(Base()) == base_inputs_hash(Base(suite="bookworm", mirror="http://deb.debian.org/debian"))
    assert base_inputs_hash(Base()) == "77fbe3c82bea0ff3873f25852eb435d1d81805938611f3c4fd6f8bc5b80e0cdc"


SPEC = """\
app: shop
build:
  steps: [COPY . /app]
  base:
    BASE
services: {web: {port: 8000}}
environments: {production: {port: 8080}}
"""


@pytest.mark.parametrize("base, problem", [
    ("suite: --no-check-gpg", "suite '--no-check-gpg' is not a Debian release name (e.g. bookworm)"),
    ("mirror: --keyring=/tmp/evil.gpg", "mirror '--keyring=/tmp/evil.gpg' is not an http:// or https:// URL"),
    ("mirror: 'file:///etc'", "mirror 'file:///etc' is not an http:// or https:// URL"),
    ("packages: [--no-check-gpg]", "package '--no-check-gpg' is not a Debian package name"),
    ("packages: ['curl,--foo']", "package 'curl,--foo' is not a Debian package name"),
])
def test_spec_values_that_could_pass_for_options_are_refused(base, problem):
    with pytest.raises(SpecError) as caught:
        parse_spec(SPEC.replace("BASE", base), "kiln.yaml")
    assert [str(i) for i in caught.value.issues] == [f"kiln.yaml:4: build.base: {problem}"]
