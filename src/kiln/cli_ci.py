"""The `kiln ci`, `kiln secret` and `kiln serve` commands: parse, build a Context, call one use
case, print. Registered on the main app by `register(app)` (cli.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from kiln.errors import UsageError
from kiln.output import Output
from kiln.settings import Settings

secret_app = typer.Typer(help="Secrets for pipeline steps and `secret:NAME` references, encrypted at rest.",
                         no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def register(app: typer.Typer) -> None:
    app.add_typer(secret_app, name="secret")


def _store():
    from kiln.secretstore import SecretStore

    return SecretStore(Settings.from_env())


@secret_app.command("set")
def secret_set(name: Annotated[str, typer.Argument(help="Secret name: lowercase letters, digits, '-', '_', '.'.")]) -> None:
    """Store a secret, encrypted. The value is read from stdin (or asked for on a terminal), never
    from the command line, where it would show in `ps` and shell history."""
    from kiln.secretstore import check_name

    check_name(name)
    if sys.stdin.isatty():
        value = typer.prompt(f"value of {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.read()
        value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise UsageError(f"no value given for secret {name!r}.", f"Pipe it in: `printf %s \"$VALUE\" | kiln secret set {name}`.")
    _store().set(name, value)
    Output().done(f"secret {name} stored (encrypted); refer to it as secret:{name}")


@secret_app.command("list")
def secret_list(json: JsonOpt = False) -> None:
    """Names of the stored secrets (never their values)."""
    names = _store().names()
    if json:
        Output().json(names)
    else:
        for name in names:
            print(name)


@secret_app.command("delete")
def secret_delete(name: Annotated[str, typer.Argument(help="Secret name.")]) -> None:
    """Remove a stored secret."""
    if not _store().delete(name):
        raise UsageError(f"there is no secret {name!r}.", "`kiln secret list` shows the stored ones.")
    Output().done(f"secret {name} deleted")
