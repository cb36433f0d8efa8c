"""usecases/environments.py on the fakes: promotion of an artifact, listing, show, compare,
recreate (with its rebake from a commit, and its refusals), previews and their expiry.
Previews and rebakes check out commits, so those tests make a local git repository."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest

from kiln import views
from kiln.errors import KilnError, UsageError
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.usecases import environments as envs
from kiln.usecases.deploy import deploy
from unit.world import World


def git(w: World, *args: str) -> str:
    return subprocess.run(("git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args), cwd=w.root,
                          check=True, capture_output=True, text=True).stdout.strip()


def committed(w: World) -> str:
    """Make the app directory a git repository with everything committed; returns the commit."""
    git(w, "init", "-q", "-b", "main")
    git(w, "add", "-A")
    git(w, "commit", "-qm", "app")
    return git(w, "rev-parse", "HEAD")


# --- promotion ------------------------------------------------------------------------------------


def test_promotion_deploys_the_source_image_with_the_target_overlay_and_records_its_origin(w):
    staging = deploy(w.ctx, w.load(), "staging").release
    images = dict(w.engine.image_store)
    outcome = envs.promote_artifact(w.ctx, w.load(), "staging", "production")

    assert w.engine.image_store == images  # nothing baked
    prod = outcome.release
    assert (prod.number, prod.image, prod.inputs_hash) == (1, staging.image, staging.inputs_hash)
    assert prod.origin == "promoted from staging v1"
    assert prod.config_digest == w.cfg("production").digest() != staging.config_digest
    assert sorted(w.instances("production").values()) == [1, 1, 1]  # production's overlay: 2 web, 1 worker
    assert len(w.instances("staging")) == 2
    assert {w.engine.specs[n].image for n in w.instances("production")} == {staging.image}
    assert w.events("production") == [(kinds.ROLLOUT_STARTED, "rollout 2 to v1 (rolling)"),
                                      (kinds.ROLLOUT_SUCCEEDED, "rollout 2: v1 serving"),
                                      (kinds.PROMOTED, "staging v1 → production v1")]
    # Promoting what already serves there again changes nothing but says so in the events.
    again = envs.promote_artifact(w.ctx, w.load(), "staging", "production")
    assert (again.release.number, again.changed) == (1, False)


def test_promotion_refusals(w):
    with pytest.raises(UsageError, match="--from and --to name the same environment"):
        envs.promote_artifact(w.ctx, w.load(), "staging", "staging")
    with pytest.raises(UsageError) as undeclared:
        envs.promote_artifact(w.ctx, w.load(), "staging", "qa")
    assert undeclared.value.message == "'qa' is not an environment of kiln.yaml; promotion goes to a declared one."
    with pytest.raises(UsageError) as unknown:
        envs.promote_artifact(w.ctx, w.load(), "qa", "production")
    assert (unknown.value.message, unknown.value.hint) == ("unknown environment 'qa'.",
                                                            "Environments: production, staging.")
    with pytest.raises(UsageError) as empty:
        envs.promote_artifact(w.ctx, w.load(), "staging", "production")
    assert empty.value.message == "shop/staging has no release in service, so there is nothing to promote."
    staging = deploy(w.ctx, w.load(), "staging").release
    w.engine.remove_image(staging.image)
    with pytest.raises(KilnError) as gone:
        envs.promote_artifact(w.ctx, w.load(), "staging", "production")
    assert gone.value.message == f"the image of staging v1 ({staging.image[:19]}) is not on production's engine."
    assert w.rollouts("production") == []


# --- listing, show, compare -----------------------------------------------------------------------


def test_listing_and_show(w):
    deploy(w.ctx, w.load(), "staging")
    staging = w.ctx.ledger.releases.current("shop", "staging")
    listed = envs.listing(w.ctx, "shop", w.load())
    assert listed == [
        views.Environment(env="production", kind="declared", url="http://127.0.0.1:18080", engine="docker", release=None,
                          image=None, origin="", expires_at=None, instances={"web": 2, "worker": 1}),
        views.Environment(env="staging", kind="declared", url="http://127.0.0.1:18081", engine="docker", release=1,
                          image=staging.image, origin="", expires_at=None, instances={"web": 1, "worker": 1})]
    shown = envs.show(w.ctx, w.load(), "staging")
    assert shown.config_digest == w.cfg("staging").digest() == staging.config_digest
    assert shown.release == views.Release.of(staging)
    assert shown.declared == ["bind", "env", "port", "preview_port", "services.web.replicas"]
    assert envs.show(w.ctx, w.load(), "production").release is None
    with pytest.raises(UsageError, match="unknown environment 'qa'"):
        envs.show(w.ctx, w.load(), "qa")


def test_compare_matches_when_only_declared_overlay_keys_differ(w):
    # staging's overlay gives the worker its first variable (production's has none at all).
    w.edit_spec("      web: {replicas: 1}\n", "      web: {replicas: 1}\n      worker: {environment: {MODE: slow}}\n")
    deploy(w.ctx, w.load(), "staging")
    envs.promote_artifact(w.ctx, w.load(), "staging", "production")
    d = envs.compare(w.ctx, w.load(), "production", "staging")
    assert d.match is True and d.image.a == d.image.b
    assert [(k.key, k.a, k.b, k.declared) for k in d.differences] == [
        ("env", "production", "staging", True), ("port", 18080, 18081, True), ("preview_port", 19080, None, True),
        ("services.web.replicas", 2, 1, True), ("services.worker.environment.MODE", "(absent)", "slow", True)]
    assert (d.instances.a, d.instances.b) == ({"web": 2, "worker": 1}, {"web": 1, "worker": 1})


def test_compare_mismatches_on_another_image_or_an_undeclared_difference(w):
    deploy(w.ctx, w.load(), "staging")
    envs.promote_artifact(w.ctx, w.load(), "staging", "production")
    w.edit_spec("    replicas: 1\n", "    replicas: 1\n    environment: {MODE: fast}\n")  # the worker
    deploy(w.ctx, w.load(), "staging")
    d = envs.compare(w.ctx, w.load(), "production", "staging")
    assert d.match is False and d.image.a == d.image.b
    assert [(k.key, k.a, k.b, k.declared) for k in d.differences if not k.declared] == [
        ("services.worker.environment.MODE", "(absent)", "fast", False)]
    w.change_code("print('v2')\n")
    w.edit_spec("    environment: {MODE: fast}\n", "")
    deploy(w.ctx, w.load(), "staging")
    d = envs.compare(w.ctx, w.load(), "production", "staging")
    assert [k.key for k in d.differences if not k.declared] == []
    assert d.match is False and d.image.a != d.image.b and d.to_json()["image"] == {
        "a": d.image.a, "b": d.image.b, "same": False}


def test_compare_shows_limits_an_overlay_declares_and_flags_those_it_does_not(w):
    w.edit_spec("      web: {replicas: 1}\n", "      web: {replicas: 1, resources: {memory: 256M}}\n")
    deploy(w.ctx, w.load(), "staging")
    envs.promote_artifact(w.ctx, w.load(), "staging", "production")
    d = envs.compare(w.ctx, w.load(), "production", "staging")
    assert d.match is True
    assert [(k.key, k.a, k.b, k.declared) for k in d.differences if "resources" in k.key] == [
        ("services.web.resources.memory", 536870912, 268435456, True)]
    w.edit_spec("    replicas: 1\n", "    replicas: 1\n    resources: {pids: 64}\n")  # the worker's, no overlay's
    deploy(w.ctx, w.load(), "staging")  # production still runs the release with the default
    d = envs.compare(w.ctx, w.load(), "production", "staging")
    assert [(k.key, k.a, k.b, k.declared) for k in d.differences if not k.declared] == [
        ("services.worker.resources.pids", 512, 64, False)]
    assert d.match is False


def test_compare_with_an_environment_that_runs_nothing_does_not_match(w):
    deploy(w.ctx, w.load(), "staging")
    d = envs.compare(w.ctx, w.load(), "production", "staging")
    assert (d.image.a, d.match, d.instances.a) == (None, False, {})


# --- recreate -------------------------------------------------------------------------------------


def test_recreate_runs_the_same_image_and_config_in_a_new_environment_on_its_own_port(w):
    release = deploy(w.ctx, w.load(), "production").release
    outcome = envs.recreate(w.ctx, w.load(), 1, "production", "prod-copy", port=28080)

    copy = outcome.release
    assert (copy.env, copy.number, copy.image, copy.origin) == ("prod-copy", 1, release.image,
                                                                "recreated from production v1")
    cfg = copy.env_config()
    assert (cfg.env, cfg.port, cfg.preview_port) == ("prod-copy", 28080, None)
    assert cfg.services == release.env_config().services
    assert sorted(w.instances("prod-copy").values()) == [1, 1, 1]
    assert w.router("prod-copy").cfg.port == 28080 and "kiln-shop-prod-copy" in w.engine.networks
    [made] = w.ctx.ledger.environments.of("shop")
    assert (made.env, made.kind, made.port, made.origin, made.expires_at) == (
        "prod-copy", "recreated", 28080, "production v1", None)
    assert len(w.instances("production")) == 3  # the source is untouched
    # It is an environment like a declared one: listed, shown, compared.
    assert [e.env for e in envs.listing(w.ctx, "shop", w.load())] == ["production", "staging", "prod-copy"]
    assert envs.show(w.ctx, w.load(), "prod-copy").config["port"] == 28080
    assert envs.compare(w.ctx, w.load(), "production", "prod-copy").image.a == release.image
    with pytest.raises(UsageError, match="environment 'prod-copy' already exists"):
        envs.recreate(w.ctx, w.load(), 1, "production", "prod-copy")


def test_recreate_picks_a_free_port_when_none_is_given(w):
    deploy(w.ctx, w.load(), "production")
    port = envs.recreate(w.ctx, w.load(), 1, "production", "copy").release.env_config().port
    assert port not in (18080, 19080) and w.ctx.ledger.environments.get("shop", "copy").port == port


def test_recreate_refusals(w):
    release = deploy(w.ctx, w.load(), "production").release
    with pytest.raises(UsageError, match="'staging' is declared in kiln.yaml"):
        envs.recreate(w.ctx, w.load(), 1, "production", "staging")
    with pytest.raises(UsageError, match="'Bad_Name' is not a valid environment name"):
        envs.recreate(w.ctx, w.load(), 1, "production", "Bad_Name")
    with pytest.raises(UsageError, match="shop/production has no release v7"):
        envs.recreate(w.ctx, w.load(), 7, "production", "copy")
    w.engine.remove_image(release.image)
    with pytest.raises(KilnError) as outside_git:
        envs.recreate(w.ctx, w.load(), 1, "production", "copy")
    assert outside_git.value.message == ("the image of production v1 is gone and it was baked outside a git "
                                         "repository, so its inputs cannot be checked out again.")
    assert w.instances("copy") == {} and w.ctx.ledger.releases.of("shop", "copy") == []


def test_recreate_refuses_a_release_baked_from_a_dirty_tree_whose_image_is_gone(w):
    release = deploy(w.ctx, w.load(), "production").release
    dirty = w.ctx.ledger.releases.record(
        app="shop", env="production", image="sha256:" + "0" * 64, image_tag="kiln/shop:gone",
        inputs_hash=release.inputs_hash, config=release.config, config_digest=release.config_digest,
        spec_digest=release.spec_digest, commit="a" * 40, dirty=True)
    with pytest.raises(KilnError) as err:
        envs.recreate(w.ctx, w.load(), dirty.number, "production", "copy")
    assert err.value.message.startswith("the image of production v2 is gone and it was baked from a work tree "
                                        "with uncommitted changes (commit aaaaaaaaaaaa + changes never recorded)")


def test_recreate_rebakes_a_gone_image_from_its_commit_to_the_same_inputs_hash(w):
    commit = committed(w)
    release = deploy(w.ctx, w.load(), "production").release
    assert (release.commit, release.dirty) == (commit, False)
    w.engine.remove_image(release.image)
    w.change_code("print('uncommitted work')\n")  # the work tree moved on; the commit did not

    outcome = envs.recreate(w.ctx, w.load(), 1, "production", "copy", port=28080)
    assert outcome.release.inputs_hash == release.inputs_hash and outcome.release.commit == commit
    assert w.engine.image_id(outcome.release.image) == outcome.release.image
    assert "Rebaked kiln/shop:" + release.inputs_hash[:16] + ": inputs hash " + release.inputs_hash[:16] + \
        " matches the release" in w.out.of("done")
    assert sorted(w.instances("copy").values()) == [1, 1, 1]


# --- previews -------------------------------------------------------------------------------------


def test_a_preview_runs_a_commit_until_its_time_is_up_then_prune_removes_it(w, monkeypatch):
    sha = committed(w)
    made, outcome = envs.preview(w.ctx, w.load(), "main", ttl=3600, port=28081)
    env = f"preview-{sha[:8]}"

    assert (made.env, made.kind, made.port, made.origin) == (env, "preview", 28081, f"ref main ({sha[:12]})")
    assert timedelta(seconds=3590) < made.expires_at - now() <= timedelta(seconds=3600)
    assert (outcome.release.env, outcome.release.number, outcome.release.commit) == (env, 1, sha)
    assert outcome.release.origin == "preview of main"
    assert sorted(w.instances(env).values()) == [1, 1, 1]  # the first environment's overlay: production's
    assert outcome.release.env_config().preview_port is None
    [listed] = [e for e in envs.listing(w.ctx, "shop", w.load()) if e.kind == "preview"]
    assert listed.env == env and listed.expires_at is not None

    assert envs.prune_previews(w.ctx, "shop") == []  # not yet
    assert len(w.instances(env)) == 3
    later = made.expires_at + timedelta(seconds=1)
    monkeypatch.setattr(envs, "now", lambda: later)
    assert envs.prune_previews(w.ctx, "shop") == [env]
    assert w.containers(env) == {} and w.router(env).facts() is None
    assert f"kiln-shop-{env}" not in w.engine.networks
    assert w.ctx.ledger.environments.of("shop") == []
    assert w.events(env)[-1] == (kinds.PREVIEW_PRUNED, f"{env} (ref main ({sha[:12]})) removed; it expired at "
                                 f"{made.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    assert envs.prune_previews(w.ctx, "shop") == []


def test_prune_everything_removes_previews_before_their_time_but_not_other_environments(w):
    sha = committed(w)
    deploy(w.ctx, w.load(), "production")
    envs.recreate(w.ctx, w.load(), 1, "production", "copy", port=28080)
    envs.preview(w.ctx, w.load(), "HEAD", ttl=0, port=28081, base="staging")
    env = f"preview-{sha[:8]}"
    assert sorted(w.instances(env).values()) == [1, 1]  # staging's overlay: one web
    assert envs.prune_previews(w.ctx, "shop", everything=True) == [env]
    assert w.events(env)[-1] == (kinds.PREVIEW_PRUNED, f"{env} (ref HEAD ({sha[:12]})) removed")
    assert [m.env for m in w.ctx.ledger.environments.of("shop")] == ["copy"]
    assert len(w.instances("copy")) == 3 and len(w.instances("production")) == 3


def test_a_preview_needs_a_git_repository(w):
    with pytest.raises(UsageError, match="is not in a git repository: a preview bakes a commit"):
        envs.preview(w.ctx, w.load(), "main", ttl=60)
