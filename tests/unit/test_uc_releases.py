"""usecases/releases.py on the fakes: manifest export and import (into a second kiln), pins, gc."""

from __future__ import annotations

import json

import pytest

from kiln import views
from kiln.errors import KilnError, UsageError
from kiln.usecases import environments as envs
from kiln.usecases import releases as rel
from kiln.usecases.deploy import deploy
from unit.world import World


def deploy_n(w: World, n: int, env: str = "production") -> list[str]:
    """Deploy n releases, each of a new image; returns their image ids, v1 first."""
    images = []
    for i in range(1, n + 1):
        w.change_code(f"print({i})\n")
        images.append(deploy(w.ctx, w.load(), env).release.image)
    return images


def test_a_manifest_exports_a_release_and_its_rollouts_and_imports_into_another_kiln(w, tmp_path):
    deploy_n(w, 2)
    v1 = w.ctx.ledger.releases.get("shop", "production", 1)
    manifest = json.loads(json.dumps(rel.export(w.ctx, "shop", "production", 1).to_json()))  # as written to a file

    assert (manifest["kiln_manifest"], manifest["app"], manifest["env"]) == (1, "shop", "production")
    assert manifest["release"] == {**views.Release.of(v1).to_json(), "image_tag": v1.image_tag, "config": v1.config,
                                   "config_digest": v1.config_digest, "spec_digest": v1.spec_digest}
    assert [(r["id"], r["from"], r["to"], r["strategy"], r["state"]) for r in manifest["rollouts"]] == [
        (1, None, 1, "rolling", "succeeded"), (2, 1, 2, "rolling", "succeeded")]
    # each rollout in its one JSON form (views.Rollout), which since issue 26 includes its last phase
    assert [r["phase"] for r in manifest["rollouts"]] == ["done", "done"]

    (tmp_path / "second").mkdir()
    other = World.make(tmp_path / "second")
    imported = rel.import_manifest(other.ctx, manifest)
    assert (imported.app, imported.env, imported.number) == ("shop", "production", 1)
    assert (imported.image, imported.image_tag, imported.inputs_hash, imported.commit, imported.dirty) == (
        v1.image, v1.image_tag, v1.inputs_hash, v1.commit, v1.dirty)
    assert (imported.config, imported.config_digest, imported.spec_digest) == (v1.config, v1.config_digest,
                                                                             v1.spec_digest)
    assert imported.origin == f"imported: shop/production v1 (exported {manifest['exported_at']})"
    # Nothing serves it there: it is recorded only.
    assert other.ctx.ledger.releases.current("shop", "production") is None

    # The second kiln re-creates it once the image is on its engine (here: put there by hand).
    with pytest.raises(KilnError, match="baked outside a git repository"):
        envs.recreate(other.ctx, other.load(), 1, "production", "copy", port=28080)
    other.engine.add_image(v1.image, {"kiln.app": "shop"})
    outcome = envs.recreate(other.ctx, other.load(), 1, "production", "copy", port=28080)
    assert outcome.release.image == v1.image and sorted(other.instances("copy").values()) == [1, 1, 1]


def test_a_manifest_imports_into_another_environment_with_that_environment_name(w):
    deploy_n(w, 1)
    manifest = rel.export(w.ctx, "shop", "production", 1).to_json()
    imported = rel.import_manifest(w.ctx, manifest, env="staging")
    assert (imported.env, imported.number, imported.config["env"]) == ("staging", 1, "staging")
    assert imported.config_digest == imported.env_config().digest() != manifest["release"]["config_digest"]


def test_a_manifest_that_is_not_one_is_refused(w):
    deploy_n(w, 1)
    manifest = rel.export(w.ctx, "shop", "production", 1).to_json()
    with pytest.raises(UsageError) as version:
        rel.import_manifest(w.ctx, {**manifest, "kiln_manifest": 2})
    assert version.value.message == "not a kiln release manifest (version 2, expected 1)."
    with pytest.raises(UsageError) as incomplete:
        rel.import_manifest(w.ctx, {k: v for k, v in manifest.items() if k != "release"})
    assert incomplete.value.message == "the manifest is incomplete or malformed: 'release'."
    with pytest.raises(UsageError, match="no release v5"):
        rel.export(w.ctx, "shop", "production", 5)
    assert len(w.ctx.ledger.releases.of("shop", "production")) == 1


def test_pin_and_unpin(w):
    deploy_n(w, 2)
    rel.pin(w.ctx, "shop", "production", 1)
    assert w.ctx.ledger.environments.pins("shop") == {("production", 1)}
    rel.pin(w.ctx, "shop", "production", 1, on=False)
    assert w.ctx.ledger.environments.pins("shop") == set()
    with pytest.raises(UsageError, match="shop/production has no release v3"):
        rel.pin(w.ctx, "shop", "production", 3)


def test_gc_keeps_what_serves_what_is_pinned_and_the_last_k_and_removes_the_rest(w):
    images = deploy_n(w, 5)  # v5 serves
    staging = deploy(w.ctx, w.load(), "staging").release  # the same image as production v5
    rel.pin(w.ctx, "shop", "production", 2)
    stopped = sorted(w.instances("production", "worker"))[0]
    w.engine.kill(stopped)
    before = dict(w.engine.image_store)

    dry = rel.collect(w.ctx, "shop", keep=2, dry_run=True)
    assert w.engine.image_store == before and stopped in w.engine.specs  # a dry run removes nothing
    assert [i.image for i in dry.images] == [images[0], images[2]]
    assert dry.instances == [views.GcInstance(instance=stopped, state="exited")]
    assert [(k.image, k.why) for k in dry.kept] == [(images[1], "production v2 (pinned)"),
                                                    (images[3], "production v4 (among the last 2)"),
                                                    (images[4], "production v5 (serving)")]
    assert staging.image == images[4]

    done = rel.collect(w.ctx, "shop", keep=2, dry_run=False)
    assert (done.images, done.instances, done.kept) == (dry.images, dry.instances, dry.kept)
    assert done.dry_run is False
    assert {i for i, _ in w.engine.images({"kiln.app": "shop"})} == {images[1], images[3], images[4]}
    assert stopped not in w.engine.specs
    assert w.engine.image_id(w.ctx.ledger.releases.get("shop", "production", 1).image_tag) is None
    # What serves is untouched.
    assert sorted(w.instances("production", "web").values()) == [5, 5] and len(w.serving()) == 2
    # The base image and the router's are not the app's: gc leaves them.
    assert w.engine.image_id("kiln/router") is not None


def test_gc_keeps_the_image_a_paused_rollout_waits_with(w):
    images = deploy_n(w, 2)
    # keep=0: only the release in service (v2) and the one a paused blue-green rollout waits with (v3).
    w.edit_spec("      strategy: rolling\n", "      strategy: blue-green\n      promote: manual\n")
    w.change_code("print(3)\n")
    waiting = deploy(w.ctx, w.load(), "production")
    assert waiting.state == "paused"
    out = rel.collect(w.ctx, "shop", keep=0, dry_run=True)
    assert [k.why for k in out.kept] == ["production v2 (serving)",
                                              f"production v3 (rollout {w.rollouts()[-1].id} unfinished)"]
    assert [i.image for i in out.images] == [images[0]]
