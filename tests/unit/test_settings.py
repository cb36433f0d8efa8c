"""kiln.settings.Settings.from_env: where kiln keeps its state."""

from __future__ import annotations

import pytest

from kiln.errors import UsageError
from kiln.settings import Settings


def test_kiln_home(tmp_path):
    s = Settings.from_env({"KILN_HOME": str(tmp_path / "k")})
    assert s.home == tmp_path / "k"
    assert s.ledger_url == f"sqlite:///{tmp_path / 'k' / 'ledger.db'}"
    assert s.extra_labels == {}


def test_kiln_home_expands_user(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings.from_env({"KILN_HOME": "~/kiln-state"}).home == tmp_path / "kiln-state"


def test_default_home_is_under_xdg_state(tmp_path):
    s = Settings.from_env({"XDG_STATE_HOME": str(tmp_path / "state")})
    assert s.home == tmp_path / "state" / "kiln"
    assert s.ledger_url == f"sqlite:///{tmp_path / 'state' / 'kiln' / 'ledger.db'}"


def test_default_home_without_xdg(tmp_path):
    assert Settings.from_env({"HOME": str(tmp_path)}).home == tmp_path / ".local" / "state" / "kiln"


def test_empty_kiln_home_means_default(tmp_path):
    assert Settings.from_env({"KILN_HOME": "", "XDG_STATE_HOME": str(tmp_path)}).home == tmp_path / "kiln"


def test_ledger_url_from_env(tmp_path):
    s = Settings.from_env({"KILN_HOME": str(tmp_path), "KILN_LEDGER_URL": "postgresql+psycopg://kiln@db/kiln"})
    assert s.ledger_url == "postgresql+psycopg://kiln@db/kiln"
    assert s.home == tmp_path


def test_default_ledger_url_is_an_absolute_sqlite_path():
    s = Settings.from_env({"KILN_HOME": "/var/lib/kiln"})
    assert s.ledger_url == "sqlite:////var/lib/kiln/ledger.db"


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", {}),
        ("kiln.test=1", {"kiln.test": "1"}),
        ("kiln.test=1,team=web", {"kiln.test": "1", "team": "web"}),
        (" a=1 , b=2 ,", {"a": "1", "b": "2"}),
        ("a=1,,b=2", {"a": "1", "b": "2"}),
        ("a=", {"a": ""}),
        ("url=a=b", {"url": "a=b"}),
        ("a=1,a=2", {"a": "2"}),
    ],
)
def test_extra_labels(text, labels):
    assert Settings.from_env({"KILN_HOME": "/x", "KILN_EXTRA_LABELS": text}).extra_labels == labels


@pytest.mark.parametrize("text", ["novalue", "a=1,b", "=x"])
def test_bad_extra_labels(text):
    with pytest.raises(UsageError) as info:
        Settings.from_env({"KILN_HOME": "/x", "KILN_EXTRA_LABELS": text})
    assert info.value.exit_code == 2
    assert "KILN_EXTRA_LABELS" in info.value.message
    assert info.value.hint


def test_a_policy_option_makes_the_context_with_it_from_the_start(monkeypatch, tmp_path):
    """`kiln ci run/work/policy show --policy FILE` and `kiln serve --policy FILE`: the settings
    name the file before the Context is made (no Context is changed per command)."""
    from kiln.cli_common import ctx_with_policy

    monkeypatch.setenv("KILN_HOME", str(tmp_path / "k"))
    monkeypatch.setenv("KILN_CI_POLICY", str(tmp_path / "from-env.yaml"))
    monkeypatch.chdir(tmp_path)
    assert ctx_with_policy(None).settings.ci_policy == tmp_path / "from-env.yaml"
    ctx = ctx_with_policy(tmp_path.joinpath("p.yaml").relative_to(tmp_path), quiet=True)
    assert ctx.settings.ci_policy == tmp_path / "p.yaml" and ctx.out.quiet
