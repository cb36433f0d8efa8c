"""`kiln image …`: the VM images kiln baked on this host (`kiln bake --vm`, `engine: qemu`), and a
release's image written in the format a cloud imports."""

from __future__ import annotations

from pathlib import Path

from kiln import views
from kiln.bake.vm import EXPORTS, VmStore, export
from kiln.context import Context
from kiln.errors import UsageError

FORMATS = tuple(EXPORTS)  # qcow2, raw, gce, vmdk


def listing(ctx: Context) -> list[views.VmImage]:
    """The VM images in KILN_HOME/vm."""
    return [views.VmImage.of(i) for i in VmStore(ctx.settings.home).all()]


def export_release(ctx: Context, app: str, env: str, number: int, fmt: str, output: Path) -> views.ImageExport:
    """Write the VM image of release `number` of app/env to `output` in `fmt` (FORMATS)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    found = ctx.ledger.releases.require(app, env, number)
    image = VmStore(ctx.settings.home).by_ref(found.image)
    if image is None:
        raise UsageError(f"v{number} of {app}/{env} has no VM image on this host (its image is {found.image[:40]}).",
                         "Export a release of an `engine: qemu` environment, or bake one: `kiln bake --vm`.")
    written = export(image, fmt, output, ctx.out)
    return views.ImageExport(release=number, image=image.ref, format=fmt, file=str(written),
                             bytes=written.stat().st_size)
