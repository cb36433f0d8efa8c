"""Typer commands `kiln image …`: the VM images kiln baked (`kiln bake --vm`, `engine: qemu`), and
a release's image written in the format a cloud imports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kiln.cli_common import DEFAULT_SPEC, EnvOpt, JsonOpt, SpecFile, ctx_of, env_config

image_app = typer.Typer(help="VM images: list them, or export a release's image for a cloud (docs/vm.md).",
                        no_args_is_help=True)


@image_app.command("list")
def image_list(json: JsonOpt = False) -> None:
    """List the VM images on this host: app, digest, inputs hash, commit, size."""
    from rich.table import Table

    from kiln.usecases import images

    ctx = ctx_of(quiet=json)
    found = images.listing(ctx)
    if json:
        ctx.out.json(found)
        return
    table = Table("image", "inputs", "commit", "MiB", "disk")
    for i in found:
        commit = (i.commit or "-")[:12] + ("+dirty" if i.dirty else "")
        table.add_row(i.image[:i.image.index("@") + 20], i.inputs_hash[:16], commit, str(i.size // 1024**2), i.disk)
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
    from kiln.errors import UsageError
    from kiln.usecases import images

    number = release.removeprefix("v")
    if not number.isdigit():
        raise UsageError(f"{release!r} is not a release number; give one such as 3 or v3 (see `kiln releases`).")
    loaded, cfg = env_config(file, env)
    ctx = ctx_of(quiet=json)
    written = images.export_release(ctx, loaded.spec.app, cfg.env, int(number), fmt, output)
    if json:
        ctx.out.json(written)
