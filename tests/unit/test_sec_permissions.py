"""Issue 15, item 14: what kiln keeps is its owner's only (KILN_HOME and what it makes in it 0700,
the ledger with its WAL, CI output, secrets and the hook's ledger-URL file 0600), whatever the
umask; and the git hook script holds no ledger password."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import process
from kiln.ci.hook import URL_FILE, install
from kiln.ledger.store import Ledger
from kiln.secretstore import SecretStore
from kiln.settings import Settings

URL = "postgresql+psycopg://kiln:hunter2-pw@db.internal/kiln"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """The usual 022, under which a plain mkdir or open makes 0755 and 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_kiln_home_the_ledger_and_its_wal_are_the_owners_only(tmp_path):
    home = tmp_path / "state" / "kiln"
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    ledger.events.record("shop", "production", "deploy", "a row, so the WAL is written")
    assert (mode(tmp_path / "state"), mode(home), mode(home / "ledger.db")) == (0o700, 0o700, 0o600)
    assert (home / "ledger.db-wal").exists() and mode(home / "ledger.db-wal") == 0o600
    ledger.db.engine.dispose()


def test_a_ledger_left_readable_by_others_is_narrowed_when_opened(tmp_path):
    db = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{db}").db.engine.dispose()
    db.chmod(0o644)
    Ledger(f"sqlite:///{db}").db.engine.dispose()
    assert mode(db) == 0o600


def test_secrets_and_ci_output_are_the_owners_only(tmp_path):
    home = tmp_path / "home"
    SecretStore(Settings(home=home, ledger_url="sqlite://"), environ={}).set("db-url", "postgres://x")
    assert (mode(home), mode(home / "secrets"), mode(home / "secrets" / "db-url"), mode(home / "secret.key")) == (
        0o700, 0o700, 0o600, 0o600)
    out = home / "ci" / "run-7.out"
    process.spawn_detached(("true",), out)
    assert (mode(home / "ci"), mode(out)) == (0o700, 0o600)


def test_the_hook_script_holds_no_ledger_password_and_the_runner_still_finds_the_ledger(tmp_path):
    repo, home = tmp_path / "app.git", tmp_path / "home"
    (repo / "hooks").mkdir(parents=True)
    environ = {"KILN_HOME": str(home), "KILN_LEDGER_URL": URL, "DOCKER_HOST": "unix:///run/docker.sock"}
    target = install(repo, "kiln.yaml", environ)
    text = target.read_text()
    assert "hunter2" not in text and "KILN_LEDGER_URL:=" not in text and "postgresql" not in text
    assert f': "${{KILN_LEDGER_URL_FILE:={home / URL_FILE}}}"; export KILN_LEDGER_URL_FILE' in text
    assert (home / URL_FILE).read_text() == URL and mode(home / URL_FILE) == 0o600 and mode(home) == 0o700
    # what the runner the hook starts reads: the file, at run time
    assert Settings.from_env({"KILN_HOME": str(home), "KILN_LEDGER_URL_FILE": str(home / URL_FILE)}).ledger_url == URL
    # without KILN_LEDGER_URL nothing is written and the default ledger is used
    install(tmp_path / "other.git", "kiln.yaml", {"KILN_HOME": str(tmp_path / "h2")})
    assert "KILN_LEDGER_URL" not in (tmp_path / "other.git" / "hooks" / "post-receive").read_text()
    assert not (tmp_path / "h2").exists()
