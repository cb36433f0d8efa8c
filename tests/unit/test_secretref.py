"""Secret references: parsing, lookup order (store, then KILN_SECRET_*), resolution, the early check."""

from __future__ import annotations

import pytest

from kiln.errors import SecretMissing
from kiln.secretref import check, env_var, reference, resolve
from kiln.secretstore import SecretStore, lookup
from kiln.settings import Settings


def test_reference_and_env_var_names():
    assert reference("secret:db-password") == "db-password"
    assert reference("plain value") is None
    assert env_var("db-password.v2") == "KILN_SECRET_DB_PASSWORD_V2"


def test_lookup_asks_the_store_first_then_the_environment(tmp_path):
    settings = Settings(home=tmp_path, ledger_url="sqlite://")
    environ = {"KILN_SECRET_API_TOKEN": "from-env", "KILN_SECRET_OTHER": "other"}
    assert lookup(settings, "api-token", environ) == "from-env"
    SecretStore(settings, environ).set("api-token", "from-store")
    assert lookup(settings, "api-token", environ) == "from-store"
    assert lookup(settings, "other", environ) == "other"
    assert lookup(settings, "nowhere", environ) is None


def test_resolve_replaces_references_and_names_the_missing_one():
    values = {"api-token": "t0k3n"}
    env = {"A": "plain", "TOKEN": "secret:api-token"}
    assert resolve(env, values.get) == {"A": "plain", "TOKEN": "t0k3n"}
    with pytest.raises(SecretMissing) as caught:
        resolve({"DB": "secret:db"}, values.get)
    assert "DB refers to secret 'db'" in caught.value.message and "KILN_SECRET_DB" in caught.value.hint
    assert "t0k3n" not in caught.value.message


def test_check_names_the_spec_key_before_anything_starts():
    with pytest.raises(SecretMissing) as caught:
        check({"web": {"A": "x"}, "worker": {"DB": "secret:db"}}, {}.get)
    assert caught.value.message.startswith("services.worker.environment.DB refers to secret 'db'")
    check({"web": {"A": "secret:a"}}, {"a": "1"}.get)  # all set: no error
