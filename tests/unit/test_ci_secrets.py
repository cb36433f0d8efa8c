"""The encrypted secret store and log masking (kiln.secretstore)."""

from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from kiln.errors import SecretError
from kiln.secretstore import MASK, Masker, SecretStore
from kiln.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path / "home", ledger_url="sqlite://")


def test_values_round_trip_and_are_encrypted_at_rest(settings):
    store = SecretStore(settings, environ={})
    store.set("api-token", "hunter2-value")
    store.set("db.password", "pw")
    assert store.get("api-token") == "hunter2-value"
    assert store.names() == ["api-token", "db.password"]
    assert b"hunter2" not in (settings.home / "secrets" / "api-token").read_bytes()
    for path in (settings.home / "secret.key", settings.home / "secrets" / "api-token"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.delete("api-token") and not store.delete("api-token")
    assert store.get("api-token") is None


def test_a_key_from_the_environment_is_used_and_no_key_file_is_written(settings):
    key = Fernet.generate_key().decode()
    SecretStore(settings, environ={"KILN_SECRET_KEY": key}).set("a", "one")
    assert not (settings.home / "secret.key").exists()
    assert SecretStore(settings, environ={"KILN_SECRET_KEY": key}).get("a") == "one"
    with pytest.raises(SecretError, match="cannot be decrypted with this key"):
        SecretStore(settings, environ={"KILN_SECRET_KEY": Fernet.generate_key().decode()}).get("a")


def test_bad_names_keys_and_loose_key_files_are_refused(settings):
    store = SecretStore(settings, environ={})
    with pytest.raises(SecretError, match="not a valid secret name"):
        store.set("../etc/passwd", "x")
    with pytest.raises(SecretError, match="not a Fernet key"):
        SecretStore(settings, environ={"KILN_SECRET_KEY": "short"}).set("a", "x")
    store.set("a", "x")
    (settings.home / "secret.key").chmod(0o644)
    with pytest.raises(SecretError, match="readable by others"):
        store.get("a")


def test_a_stored_secret_without_its_key_is_an_error(settings):
    store = SecretStore(settings, environ={})
    store.set("a", "x")
    (settings.home / "secret.key").unlink()
    with pytest.raises(SecretError, match="key to decrypt it is gone"):
        store.get("a")


def test_masking_hides_every_value_and_each_line_of_multiline_ones():
    mask = Masker(["s3cr3t", "s3cr3t-longer", "line-one\nline-two", "", "ab"])
    assert mask("token=s3cr3t-longer and s3cr3t") == f"token={MASK} and {MASK}"
    assert mask("got line-two") == f"got {MASK}"
    assert mask("ab is masked as a word, not inside about, tab, ab_c or ab9: ab.") == (
        f"{MASK} is masked as a word, not inside about, tab, ab_c or ab9: {MASK}.")


def test_one_and_two_character_values_are_masked_only_as_whole_words():
    mask = Masker(["7", "x!", "q"])
    assert mask("7\ncode 17 or 7.5 or x!y or (x!) q") == f"{MASK}\ncode 17 or {MASK}.5 or x!y or ({MASK}) {MASK}"
