"""Issue 26: one view layer. The use cases return the typed values of kiln/views.py; the CLI's
--json and the API answer the same JSON for the same value; the API's OpenAPI schemas name those
types; times, strategies and rollouts are formatted in one place; the front ends import nothing
of the ledger."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import get_args

import pytest
from fastapi.testclient import TestClient

from kiln import cli, views
from kiln.errors import UsageError
from kiln.server.app import make_app
from kiln.server.plane import Plane
from kiln.spec.models import STRATEGIES, RolloutPolicy, strategy_of
from kiln.usecases import tokens
from kiln.usecases.deploy import deploy
from unit.cli_inproc import run_kiln

SRC = Path(__file__).resolve().parents[2] / "src" / "kiln"


@pytest.fixture
def api(w) -> TestClient:
    made = tokens.create(w.ctx, "vic", "viewer", ())
    return TestClient(make_app(w.ctx, None, plane=Plane(w.ctx, [w.root / "kiln.yaml"])),
                      headers={"Authorization": f"Bearer {made.token}"})


def cli_json(w, monkeypatch, *args: str):
    monkeypatch.setattr(cli, "_ctx", lambda quiet=False: w.ctx)
    done = run_kiln((*args, "--json"), cwd=w.root, env={"NO_COLOR": "1", "KILN_HOME": str(w.ctx.settings.home)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_200_answer_of_the_api_is_a_named_type_or_an_array_of_one(api):
    doc = api.get("/api/openapi.json").json()
    named = set(doc["components"]["schemas"])
    loose = []
    for path, operations in doc["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in operations.items():
            for media, content in operation["responses"]["200"].get("content", {"": {"schema": {}}}).items():
                schema = content["schema"]
                ref = schema.get("$ref") or (schema.get("items", {}).get("$ref") if schema.get("type") == "array" else None)
                if not ref or ref.rsplit("/", 1)[-1] not in named:
                    loose.append(f"{method.upper()} {path} ({media}): {schema}")
    assert loose == []
    assert {"Status", "Instance", "Event", "ReleaseEntry", "Rollout", "RolloutDetail", "CiRun", "Token"} <= named
    # a time is a string in the schema, as in the JSON
    assert doc["components"]["schemas"]["Event"]["properties"]["at"]["type"] == "string"


def test_the_cli_and_the_api_print_the_same_value_the_same_way(w, api, monkeypatch):
    deploy(w.ctx, w.load(), "production")
    w.change_code("print('v2')\n")
    deploy(w.ctx, w.load(), "production")
    base = "/api/v1/apps/shop/envs/production"
    assert cli_json(w, monkeypatch, "status", "-e", "production") == api.get(f"{base}/status").json()
    assert cli_json(w, monkeypatch, "releases", "-e", "production") == api.get(f"{base}/releases").json()
    assert cli_json(w, monkeypatch, "rollout", "list", "-e", "production") == api.get(f"{base}/rollouts").json()
    shown = cli_json(w, monkeypatch, "rollout", "show", "-e", "production")
    assert shown == api.get(f"{base}/rollouts/{shown['id']}").json()
    # Deliberate since issue 26: an event names its app in the API too (the CLI's --json always did),
    # and an environment in a list has the same fields in both (engine; origin, expiry, instances).
    events = api.get("/api/v1/apps/shop/events", params={"limit": 3}).json()
    assert events and all(e["app"] == "shop" for e in events)
    from kiln.usecases import environments

    listed = [e.to_json() for e in environments.listing(w.ctx, "shop", w.load())]
    assert api.get("/api/v1/apps/shop/envs").json() == listed
    assert set(listed[0]) == {"env", "kind", "url", "engine", "release", "image", "origin", "expires_at", "instances"}


def test_a_time_has_one_json_form_written_in_one_place():
    at = datetime(2026, 1, 2, 3, 4, 5, 600000)
    assert views.utc(at) == "2026-01-02T03:04:05.600000Z" and views.utc(None) is None
    assert views.utc(at, "seconds") == "2026-01-02T03:04:05Z"
    event = views.Event(app="a", id=1, env="e", kind="k", message="m", at=at)
    assert event.at == at and event.to_json()["at"] == views.utc(at)  # a datetime in Python, the Z form in JSON
    writers = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if p.name != "views.py" and re.search(r'isoformat\([^)]*\)\s*\+\s*"Z"', p.read_text())]
    assert writers == []


def test_one_list_of_strategies_the_specs():
    assert STRATEGIES == get_args(RolloutPolicy.model_fields["strategy"].annotation) == ("rolling", "blue-green", "canary")
    assert strategy_of("canary") == "canary" and strategy_of(None) is None
    with pytest.raises(UsageError, match="unknown strategy 'sideways'"):
        strategy_of("sideways")
    copies = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if '"rolling", "blue-green", "canary"' in p.read_text()]
    assert copies == ["spec/models.py"]


def test_the_front_ends_import_nothing_of_the_ledger():
    front = sorted(SRC.glob("cli*.py")) + sorted((SRC / "server").rglob("*.py"))
    leaks = [f"{p.relative_to(SRC)}:{n}" for p in front for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"kiln.ledger|\.ledger\.", line)]
    assert leaks == []


def test_a_vm_image_shows_its_disks_size(tmp_path):
    """Deliberate since issue 26: `kiln image list --json` also gives each image's size in bytes
    (the table's MiB column), so the CLI reads no file of its own."""
    from kiln.bake.vm import DISK, VmImage

    (tmp_path / DISK).write_bytes(b"\0" * 4096)
    shown = views.VmImage.of(VmImage("kiln-vm/shop@sha256:" + "a" * 64, tmp_path, "a" * 64, "b" * 64, "sha256:c",
                                     None, False)).to_json()
    assert shown == {"image": "kiln-vm/shop@sha256:" + "a" * 64, "disk": str(tmp_path / DISK), "sha256": "a" * 64,
                     "inputs_hash": "b" * 64, "app_image": "sha256:c", "commit": None, "dirty": False, "size": 4096}
