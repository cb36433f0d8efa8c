"""Issue 15, item 4: a pushed kiln.yaml cannot bake the host's files. build.context and
build.dockerfile are relative, without '..' (spec errors at their line), and resolve inside the
spec's directory (a symlink pointing out is refused before anything is read or built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.bake.baker import bake, build_root
from kiln.errors import BuildError, SpecError
from kiln.output import Output
from kiln.spec.loader import load_spec, parse_spec

SPEC = """\
app: shop
build:
  RECIPE
services: {web: {port: 8000}}
environments: {production: {port: 8080}}
"""


class NoImages:
    """An Images boundary that fails the test if the bake gets as far as using it."""

    def __getattr__(self, name):
        raise AssertionError(f"the bake reached the engine ({name}) although it should have been refused")


def _issues(recipe: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(SPEC.replace("RECIPE", recipe), "kiln.yaml")
    return [str(i) for i in caught.value.issues]


@pytest.mark.parametrize("recipe, problem", [
    ("context: /etc\n  steps: [COPY . /x]",
     "context: '/etc' is an absolute path; give one relative to kiln.yaml's directory, inside it"),
    ("context: ../..\n  steps: [COPY . /x]",
     "context: '../..' leaves kiln.yaml's directory ('..'); the build reads only files inside it"),
    ("context: app/../../home\n  steps: [COPY . /x]",
     "context: 'app/../../home' leaves kiln.yaml's directory ('..'); the build reads only files inside it"),
    ("dockerfile: ../../etc/Dockerfile",
     "dockerfile: '../../etc/Dockerfile' leaves kiln.yaml's directory ('..'); the build reads only files inside it"),
    ("dockerfile: /root/Dockerfile",
     "dockerfile: '/root/Dockerfile' is an absolute path; give one relative to kiln.yaml's directory, inside it"),
])
def test_absolute_paths_and_dot_dot_are_spec_errors_naming_the_key(recipe, problem):
    assert _issues(recipe) == [f"kiln.yaml:2: build: {problem}"]


def _app(tmp_path: Path, recipe: str) -> Path:
    host = tmp_path / "host"
    host.mkdir()
    (host / "credentials").write_text("[default]\naws_secret_access_key = hunter2\n")
    (host / "Dockerfile").write_text("ARG KILN_BASE\nFROM ${KILN_BASE}\nCOPY credentials /c\n")
    app = tmp_path / "app"
    app.mkdir()
    (app / "kiln.yaml").write_text(SPEC.replace("RECIPE", recipe))
    return app


def test_a_context_symlinked_out_of_the_repository_is_refused_before_anything_is_read(tmp_path):
    app = _app(tmp_path, "context: ctx\n  steps: [COPY . /x]")
    (app / "ctx").symlink_to(tmp_path / "host")
    with pytest.raises(BuildError) as caught:
        bake(NoImages(), load_spec(app / "kiln.yaml"), Output(quiet=True), tmp_path / "scratch")
    assert caught.value.message == (
        f"build.context 'ctx' resolves to {tmp_path / 'host'}, outside kiln.yaml's directory {app} (through a "
        "symlink); refusing to bake files from there.")
    assert not (tmp_path / "scratch").exists()


def test_a_dockerfile_symlinked_out_of_the_context_is_refused(tmp_path):
    app = _app(tmp_path, "dockerfile: Dockerfile")
    (app / "Dockerfile").symlink_to(tmp_path / "host" / "Dockerfile")
    with pytest.raises(BuildError) as caught:
        bake(NoImages(), load_spec(app / "kiln.yaml"), Output(quiet=True), tmp_path / "scratch")
    assert caught.value.message == (
        f"build.dockerfile 'Dockerfile' resolves to {tmp_path / 'host' / 'Dockerfile'}, outside the build context "
        f"{app} (through a symlink); refusing to read it.")


def test_a_context_inside_the_spec_directory_is_fine(tmp_path):
    app = _app(tmp_path, "context: src\n  steps: [COPY . /x]")
    (app / "src" / "deep").mkdir(parents=True)
    (app / "inner").symlink_to(app / "src")  # a symlink that stays inside is fine
    assert build_root(app, "src") == (app / "src").resolve()
    assert build_root(app, "inner") == (app / "src").resolve()
    assert build_root(app, ".") == app.resolve()
    with pytest.raises(BuildError, match="build.context 'missing': .* does not exist"):
        build_root(app, "missing")
