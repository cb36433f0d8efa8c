"""Baking on a real engine: reuse by inputs hash, provenance labels, refused secrets, failed builds."""

from __future__ import annotations

import subprocess

import docker
import pytest
from conftest import App

pytestmark = pytest.mark.integration


def test_bake_labels_provenance_and_reuses_by_inputs_hash(app: App, engine: docker.DockerClient) -> None:
    subprocess.run(["git", "init", "-q", str(app.dir)], check=True)
    subprocess.run(["git", "-C", str(app.dir), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "x",
                    "--allow-empty"], check=True)
    subprocess.run(["git", "-C", str(app.dir), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(app.dir), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "app"],
                   check=True)
    commit = subprocess.run(["git", "-C", str(app.dir), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    first = app.kiln_json("bake")
    labels = engine.images.get(first["image"]).labels
    assert labels["kiln.inputs"] == first["inputs_hash"]
    assert labels["kiln.commit"] == commit and labels["kiln.dirty"] == "false"
    assert len(labels["kiln.spec"]) == 64

    again = app.kiln_json("bake")
    assert again["built"] is False and again["image"] == first["image"]

    (app.dir / "notes.txt").write_text("a new file in the context changes the inputs\n")
    changed = app.kiln_json("bake")
    assert changed["built"] is True and changed["inputs_hash"] != first["inputs_hash"]
    assert engine.images.get(changed["image"]).labels["kiln.dirty"] == "true"

    (app.dir / ".dockerignore").write_text((app.dir / ".dockerignore").read_text() + "notes.txt\n")
    (app.dir / "notes.txt").write_text("ignored files do not count\n")
    ignored = app.kiln_json("bake")
    assert ignored["inputs_hash"] != changed["inputs_hash"]  # .dockerignore itself changed
    (app.dir / "notes.txt").write_text("still ignored, edited again\n")
    assert app.kiln_json("bake")["inputs_hash"] == ignored["inputs_hash"]
    # kiln.yaml is config (releases record it), not an image input
    spec = app.spec.read_text()
    app.spec.write_text(spec.replace("replicas: 2", "replicas: 3"))
    try:
        assert app.kiln_json("bake")["inputs_hash"] == ignored["inputs_hash"]
    finally:
        app.spec.write_text(spec)


def test_bake_refuses_secrets_unless_allowed(app: App) -> None:
    (app.dir / ".env").write_text("DB_PASSWORD=hunter2\n")
    proc = app.kiln("bake", check=False)
    assert proc.returncode == 1
    assert "refusing to bake files that look like secrets: .env is an .env file with values" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
    spec = app.spec.read_text()
    app.spec.write_text(spec.replace("  context: .\n", "  context: .\n  allow_secrets: ['.env']\n"))
    try:
        assert app.kiln("bake").returncode == 0
    finally:
        app.spec.write_text(spec)
        (app.dir / ".env").unlink()


def test_failed_build_is_one_clear_error(app: App) -> None:
    spec = app.spec.read_text()
    app.spec.write_text(spec.replace("    - COPY app.py /app/app.py\n", "    - COPY app.py /app/app.py\n    - RUN exit 3\n"))
    try:
        proc = app.kiln("deploy", check=False)
    finally:
        app.spec.write_text(spec)
    assert proc.returncode == 1
    assert "error: the build failed:" in proc.stderr and "returned a non-zero code: 3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert app.kiln_json("releases") == []  # nothing recorded, nothing started
