"""Where kiln keeps its state, from the environment. Read once, passed in a Context."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import UsageError


def _default_home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME") or str(Path.home())
    state = env.get("XDG_STATE_HOME") or str(Path(home) / ".local" / "state")
    return Path(state) / "kiln"


@dataclass(frozen=True)
class Settings:
    home: Path  # KILN_HOME: ledger, router configs and sockets, scratch space
    ledger_url: str  # KILN_LEDGER_URL: sqlite (default) or postgresql+psycopg://…
    extra_labels: dict[str, str] = field(default_factory=dict)  # KILN_EXTRA_LABELS: k=v,k=v
    ci_max_runs: int = 4  # KILN_CI_MAX_RUNS: pipeline runs running at once on this ledger; others wait queued
    ci_policy: Path | None = None  # KILN_CI_POLICY: the pipeline policy file (default: KILN_HOME/ci-policy.yaml if it exists)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env["KILN_HOME"]).expanduser() if env.get("KILN_HOME") else _default_home(env)
        url = env.get("KILN_LEDGER_URL") or _url_from_file(env.get(URL_FILE_ENV)) or f"sqlite:///{home / 'ledger.db'}"
        policy = Path(env["KILN_CI_POLICY"]).expanduser() if env.get("KILN_CI_POLICY") else None
        return cls(home=home, ledger_url=url, extra_labels=_parse_labels(env.get("KILN_EXTRA_LABELS", "")),
                   ci_max_runs=_positive(env, "KILN_CI_MAX_RUNS", 4), ci_policy=policy)


URL_FILE_ENV = "KILN_LEDGER_URL_FILE"  # a 0600 file holding the ledger URL (the git hook's way: no password in it)


def _url_from_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise UsageError(f"{URL_FILE_ENV}: cannot read {path}: {exc.strerror}.",
                         "It holds the ledger URL; `kiln ci hook install` writes it (mode 0600).") from None


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{name}: {text!r} is not a positive whole number.", f"Set it to 1 or more, e.g. {name}={default}.")
    return int(text)


def _parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"KILN_EXTRA_LABELS: {item!r} is not key=value.", "Write it as kiln.test=1,team=web.")
        labels[key] = value
    return labels
