"""Issue 15, item 3: no `secret:NAME` reference ever resolves to kiln's own master key
(KILN_SECRET_KEY), neither from a spec, a pipeline step, the Docker provider nor the store."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from kiln.errors import SecretError, SpecError
from kiln.secretref import reserved, resolve
from kiln.secretstore import SecretStore, lookup
from kiln.settings import Settings
from kiln.spec.loader import parse_spec

KEY = Fernet.generate_key().decode()

SPEC = """\
app: shop
build: {steps: [COPY app.py /app.py]}
services:
  web:
    port: 8000
    environment:
      LEAK: secret:key
environments: {production: {port: 8080}}
"""

PIPELINE = """\
app: shop
build: {steps: [COPY app.py /app.py]}
services: {web: {port: 8000}}
environments: {production: {port: 8080}}
pipeline:
  steps:
    - {run: 'echo $LEAK | base64', environment: {LEAK: "secret:key"}}
"""


def test_only_the_name_of_kilns_own_key_is_reserved():
    assert reserved("key")
    assert not any(reserved(n) for n in ["keys", "api-key", "key.v2", "db-key", "k-e-y"])


def test_a_spec_referring_to_the_master_key_is_refused_with_file_and_line():
    with pytest.raises(SpecError) as caught:
        parse_spec(SPEC, "kiln.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "kiln.yaml:6: services.web.environment: LEAK: secret:key is reserved (KILN_SECRET_KEY is kiln's own key); "
        "store the value under another name"]
    with pytest.raises(SpecError) as caught:
        parse_spec(PIPELINE, "kiln.yaml")
    assert ("kiln.yaml:7: pipeline.steps[0].environment: LEAK: secret:key is reserved (KILN_SECRET_KEY is kiln's "
            "own key); store the value under another name") in [str(i) for i in caught.value.issues]
    overlay = SPEC.replace("    environment:\n      LEAK: secret:key\n", "").replace(
        "{production: {port: 8080}}", "\n  production:\n    port: 8080\n    services: {web: {environment: {X: 'secret:key'}}}")
    with pytest.raises(SpecError, match=r"^kiln.yaml:9: environments.production.services.web.environment: X: secret:key "
                                        r"is reserved"):
        parse_spec(overlay, "kiln.yaml")


def test_lookup_never_returns_the_master_key(tmp_path):
    settings = Settings(home=tmp_path, ledger_url="sqlite://")
    environ = {"KILN_SECRET_KEY": KEY}
    SecretStore(settings, environ).set("api-token", "t0k3n")  # the store is in use with that key
    assert lookup(settings, "api-token", environ) == "t0k3n"
    with pytest.raises(SecretError, match="secret name 'key' is reserved: KILN_SECRET_KEY is kiln's own key") as caught:
        lookup(settings, "key", environ)
    assert KEY not in str(caught.value)
    # nor can the store hold a secret by that name
    with pytest.raises(SecretError, match="is reserved"):
        SecretStore(settings, environ).set("key", "anything")
    assert sorted(p.name for p in (tmp_path / "secrets").iterdir()) == ["api-token"]


def test_resolving_an_environment_as_the_docker_provider_does_refuses_the_master_key(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path, ledger_url="sqlite://")
    monkeypatch.setenv("KILN_SECRET_KEY", KEY)
    with pytest.raises(SecretError, match="is reserved") as caught:
        resolve({"A": "plain", "LEAK": "secret:key"}, lambda name: lookup(settings, name))
    assert KEY not in str(caught.value)
