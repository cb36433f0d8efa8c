"""`kiln ci hook install`: a post-receive hook in a (bare) repository that starts a run for each
pushed ref. The script is rendered here (pure) and written by `install`."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from kiln.errors import UsageError
from kiln.private import write_private
from kiln.settings import URL_FILE_ENV, Settings

MARK = "# kiln: pipeline runs for pushed refs"
# What the runner needs to find its state, engine and pipeline policy, kept from the installer's environment as
# defaults (a push over ssh does not carry the pusher's environment). Never a secret key, and
# never KILN_LEDGER_URL, which may hold a password: the script names a 0600 file holding it
# (KILN_LEDGER_URL_FILE), read when the hook runs.
KEPT = ("KILN_HOME", "KILN_EXTRA_LABELS", "DOCKER_HOST", "KILN_CI_POLICY")
URL_FILE = "ledger-url"  # in KILN_HOME


def script(repo: Path, spec: str, python: str, environ: Mapping[str, str], url_file: Path | None = None) -> str:
    lines = ["#!/bin/sh", f"{MARK} (written by `kiln ci hook install`; `kiln ci hook install --force` rewrites it)"]
    for name in KEPT:
        if environ.get(name):
            lines.append(f': "${{{name}:={_sh_default(environ[name])}}}"; export {name}')
    if url_file is not None:
        lines.append(f': "${{{URL_FILE_ENV}:={_sh_default(str(url_file))}}}"; export {URL_FILE_ENV}')
    lines.append(f"exec {shlex.quote(python)} -m kiln ci hook receive --repo {shlex.quote(str(repo))} "
                 f"--spec {shlex.quote(spec)}")
    return "\n".join(lines) + "\n"


def _sh_default(value: str) -> str:
    """A value safe inside ${VAR:=…} (quoted words are not allowed there in every shell)."""
    if any(ch in value for ch in "}\"'`$\\\n"):
        raise UsageError(f"cannot write {value!r} into a hook script.", "Use a path without quotes, '$' or '}'.")
    return value.replace(" ", "\\ ")


def install(repo: Path, spec: str, environ: Mapping[str, str], force: bool = False) -> Path:
    hooks = repo / "hooks" if (repo / "hooks").is_dir() or not (repo / ".git").exists() else repo / ".git" / "hooks"
    target = hooks / "post-receive"
    if target.exists() and MARK not in target.read_text(errors="replace") and not force:
        raise UsageError(f"{target} already exists and is not kiln's.",
                         "Pass --force to replace it, or call `kiln ci hook receive` from it yourself.")
    hooks.mkdir(parents=True, exist_ok=True)
    url, url_file = environ.get("KILN_LEDGER_URL"), None
    if url:
        url_file = Settings.from_env(environ).home / URL_FILE
        write_private(url_file, url.encode())
    target.write_text(script(repo, spec, sys.executable, environ, url_file))
    target.chmod(0o755)
    return target
