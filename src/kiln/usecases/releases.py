"""Release manifests (export, import), pins and garbage collection.

A manifest is a portable record of one release: the image digest and inputs hash, the resolved
config (secrets only as `secret:NAME` references, as the ledger holds them), provenance and its
rollout history. Importing it into another ledger lets a second kiln installation re-create the
release (`kiln recreate`), rebaking from the recorded commit when the image is not there."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kiln import views
from kiln.bake.vm import VM_REPO, VmStore
from kiln.context import Context
from kiln.errors import UsageError
from kiln.ledger.releases import Release
from kiln.providers.base import INSTANCE, selector
from kiln.spec.resolve import EnvConfig

MANIFEST_VERSION = 1


def export(ctx: Context, app: str, env: str, number: int) -> views.Manifest:
    release = ctx.ledger.releases.require(app, env, number)
    rollouts = [r for r in ctx.ledger.rollouts.of(app, env, limit=10_000) if number in (r.to_release, r.from_release)]
    return views.Manifest(
        kiln_manifest=MANIFEST_VERSION, app=app, env=env, exported_at=datetime.now(UTC).isoformat(),
        release=views.ManifestRelease(**views.ReleaseDetail.full(release).model_dump(), image_tag=release.image_tag,
                                      spec_digest=release.spec_digest),
        rollouts=[views.Rollout.of(r) for r in sorted(rollouts, key=lambda r: r.id)])


def import_manifest(ctx: Context, manifest: dict[str, Any], env: str | None = None) -> Release:
    """Record the manifest's release as the next release of its app in `env` (default: its own)."""
    try:
        if manifest.get("kiln_manifest") != MANIFEST_VERSION:
            raise UsageError(f"not a kiln release manifest (version {manifest.get('kiln_manifest')!r}, "
                             f"expected {MANIFEST_VERSION}).", "Export one with `kiln release export N`.")
        rel = manifest["release"]
        cfg = EnvConfig.model_validate({**rel["config"], "env": env or manifest["env"]})
        return ctx.ledger.releases.record(
            app=manifest["app"], env=cfg.env, image=rel["image"], image_tag=rel["image_tag"],
            inputs_hash=rel["inputs_hash"], config=cfg.model_dump(mode="json"), config_digest=cfg.digest(),
            spec_digest=rel["spec_digest"], commit=rel["commit"], dirty=rel["dirty"],
            origin=f"imported: {manifest['app']}/{manifest['env']} v{rel['number']} (exported {manifest['exported_at']})")
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the manifest is incomplete or malformed: {exc}.",
                         "Use a file written by `kiln release export`.") from None


def pin(ctx: Context, app: str, env: str, number: int, on: bool = True) -> None:
    ctx.ledger.releases.require(app, env, number)
    if on:
        ctx.ledger.environments.pin(app, env, number)
    else:
        ctx.ledger.environments.unpin(app, env, number)


def collect(ctx: Context, app: str, keep: int, dry_run: bool) -> views.Collected:
    """Remove the app's images that no recent (last `keep` per environment), pinned, serving or
    still-running release needs, and its instances that have stopped. Never what serves."""
    needed: dict[str, str] = {}  # image id -> why it stays
    pins = ctx.ledger.environments.pins(app)
    for env in ctx.ledger.releases.environments(app):
        releases = ctx.ledger.releases.of(app, env)
        current = ctx.ledger.releases.current(app, env)
        for i, r in enumerate(releases):
            why = ("serving" if current and r.number == current.number else
                   "pinned" if (env, r.number) in pins else
                   f"among the last {keep}" if i < keep else None)
            if why:
                needed.setdefault(r.image, f"{env} v{r.number} ({why})")
        for rollout in ctx.ledger.rollouts.unfinished(app, env):
            moving_to = ctx.ledger.releases.get(app, env, rollout.to_release)
            if moving_to:
                needed.setdefault(moving_to.image, f"{env} v{moving_to.number} (rollout {rollout.id} unfinished)")
    engine = ctx.engine()  # where kiln bakes, so where the app's images pile up
    store = VmStore(ctx.settings.home)
    for ref in [r for r in needed if "@" in r]:
        # pushed (a cluster's release): its local image stays too; a VM image: the container image
        # of the same files, which its hooks run
        vm = store.by_ref(ref)
        local = vm.app_image if vm else engine.image_id(ref)
        if local:
            needed.setdefault(local, needed[ref])
    containers = engine.containers(selector(app, role=INSTANCE))
    for c in containers:
        if c.running:
            needed.setdefault(c.image, f"runs in {c.name}")
    images = [(image, tags) for image, tags in engine.images(selector(app)) if image not in needed]
    stopped = [c for c in containers if not c.running]
    disks = [vm for vm in store.all() if vm.ref.startswith(f"{VM_REPO}/{app}@") and vm.ref not in needed]
    if not dry_run:
        for c in stopped:
            engine.remove(c.name)
        for image, _ in images:
            engine.remove_image(image)
        for vm in disks:
            store.remove(vm)
    return views.Collected(
        dry_run=dry_run, keep=keep,
        images=[views.GcImage(image=image, tags=list(tags)) for image, tags in images]
        + [views.GcImage(image=vm.ref, tags=[str(vm.disk)]) for vm in disks],
        instances=[views.GcInstance(instance=c.name, state=c.state) for c in stopped],
        kept=[views.GcKept(image=image, why=why) for image, why in sorted(needed.items(), key=lambda kv: kv[1])])
