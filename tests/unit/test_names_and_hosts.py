"""Rules with one definition each: names of apps, services and environments (spec/models.py) and
the host a bind address is reached at (spec/resolve.py)."""

from __future__ import annotations

import pytest

from kiln.spec.checks import spec_problems
from kiln.spec.models import NAME_MAX, Spec, valid_name
from kiln.spec.resolve import resolve, url_host
from kiln.usecases.environments import free_port


@pytest.mark.parametrize("name", ["a", "shop", "web-2", "production", "a" * NAME_MAX, "x-"])
def test_valid_names(name):
    assert valid_name(name)


@pytest.mark.parametrize("name", ["", "Shop", "2web", "-web", "web_2", "web.2", "wéb", "a b", "a" * (NAME_MAX + 1),
                                  "web\n"])
def test_invalid_names(name):
    assert not valid_name(name)


def test_a_longer_limit_for_environments_kiln_makes():
    assert valid_name("e" * 40, 40) and not valid_name("e" * 41, 40) and not valid_name("E" * 5, 40)


def _spec(app: str = "shop", service: str = "web", env: str = "production") -> Spec:
    return Spec.model_validate({"app": app, "build": {"steps": ["RUN true"]},
                                "services": {service: {"port": 8000}}, "environments": {env: {"port": 8080}}})


def test_the_spec_checks_use_the_rule_for_each_kind_of_name():
    assert list(spec_problems(_spec())) == []
    hint = "use lowercase letters, digits and '-', starting with a letter, at most 31 characters"
    assert list(spec_problems(_spec(app="Shop"))) == [(("app",), f"'Shop' is not a valid name; {hint}")]
    assert list(spec_problems(_spec(service="web_1"))) == [
        (("services", "web_1"), f"service name 'web_1' is not valid; {hint}")]
    assert list(spec_problems(_spec(env="p" * 32))) == [
        (("environments", "p" * 32), f"environment name {'p' * 32!r} is not valid; {hint}")]


@pytest.mark.parametrize(("bind", "host"), [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"),
                                            ("192.0.2.7", "192.0.2.7"), ("localhost", "localhost")])
def test_url_host(bind, host):
    assert url_host(bind) == host


def test_urls_of_an_environment_bound_to_any_address_use_the_loopback():
    spec = Spec.model_validate({"app": "shop", "build": {"steps": ["RUN true"]}, "services": {"web": {"port": 8000}},
                                "environments": {"staging": {"port": 8081, "bind": "0.0.0.0", "preview_port": 9081}}})
    cfg = resolve(spec, "staging")
    assert (cfg.bind, cfg.url, cfg.preview_url) == ("0.0.0.0", "http://127.0.0.1:8081", "http://127.0.0.1:9081")


def test_free_port_binds_the_host_of_the_rule():
    assert 0 < free_port("0.0.0.0") < 65536
