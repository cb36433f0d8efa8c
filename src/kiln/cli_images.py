"""Typer commands `kiln image …`: the VM images kiln baked (`kiln bake --vm`, `engine: qemu`), and
a release's image written in the format a cloud imports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli_common import DEFAULT_SPEC, EnvOpt, JsonOpt, SpecFile, ctx_of, env_config

image_app = typer.Typer(help="VM images: list them, or export a release's image for a cloud (docs/vm.md).",
                        no_args_is_help=True)
FORMATS = ("qcow2", "raw", "gce", "vmdk")


@image_app.command("list")
def image_list(json: JsonOpt = False) -> None:
    """List the VM images on this host: app, digest, inputs hash, commit, size."""
    from rich.table import Table

    from kiln.bake.vm import VmStore

    ctx = ctx_of(quiet=json)
    images = VmStore(ctx.settings.home).all()
    if json:
        ctx.out.json([{"image": i.ref, "disk": str(i.disk), "sha256": i.sha256, "inputs_hash": i.inputs_hash,
                       "app_image": i.app_image, "commit": i.commit, "dirty": i.dirty} for i in images])
        return
    table = Table("image", "inputs", "commit", "MiB", "disk")
    for i in images:
        commit = (i.commit or "-")[:12] + ("+dirty" if i.dirty else "")
        table.add_row(i.ref[:i.ref.index("@") + 20], i.inputs_hash[:16], commit, str(i.disk.stat().st_size // 1024**2), str(i.disk))
    ctx.out.print(table)


@image_app.command("export")
def image_export(
    release: Annotated[str, typer.Argument(help="Release number (3 or v3) of the environment, whose engine is qemu.")],
    fmt: Annotated[str, typer.Option("--format", help="qcow2 (OpenStack), raw, gce (disk.raw in a .tar.gz), vmdk (AWS import-image).")] = "qcow2",
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")] = Path("disk.qcow2"),
    file: SpecFile = DEFAULT_SPEC, env: EnvOpt = None, json: JsonOpt = False,
) -> None:
    """Write release N's VM image in the format a cloud imports; docs/vm.md gives each upload command.
    The image boots by itself (syslinux) and reads its configuration with cloud-init (NoCloud, ConfigDrive, OpenStack)."""
    from kiln.bake.vm import VmStore, export
    from kiln.errors import UsageError

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    number = release.removeprefix("v")
    if not number.isdigit():
        raise UsageError(f"{release!r} is not a release number; give one such as 3 or v3 (see `kiln releases`).")
    loaded, cfg = env_config(file, env)
    ctx = ctx_of(quiet=json)
    found = ctx.ledger.releases.require(loaded.spec.app, cfg.env, int(number))
    image = VmStore(ctx.settings.home).by_ref(found.image)
    if image is None:
        raise UsageError(f"v{number} of {loaded.spec.app}/{cfg.env} has no VM image on this host (its image is {found.image[:40]}).",
                         "Export a release of an `engine: qemu` environment, or bake one: `kiln bake --vm`.")
    written = export(image, fmt, output, ctx.out)
    if json:
        ctx.out.json({"release": int(number), "image": image.ref, "format": fmt, "file": str(written),
                      "bytes": written.stat().st_size})
