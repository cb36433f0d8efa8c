"""Issue 15 item 11: names that run together. `shop` + `eu-prod` and `shop-eu` + `prod` both lead
to `kiln-shop-eu-prod`; the environment that has the name keeps it, and the other can neither
take nor remove what carries it. (The real router and network: tests/integration/test_names.py.)"""

from __future__ import annotations

import pytest

from kiln.errors import NameTaken
from kiln.providers.base import check_owner, network_name, selector
from kiln.providers.fake import FakeEngine

FIRST, SECOND = ("shop", "eu-prod"), ("shop-eu", "prod")


def test_the_two_environments_really_share_names():
    assert network_name(*FIRST) == network_name(*SECOND) == "kiln-shop-eu-prod"


def test_a_network_of_another_environment_is_neither_taken_nor_removed():
    engine = FakeEngine()
    name = network_name(*FIRST)
    engine.ensure_network(name, selector(*FIRST))
    with pytest.raises(NameTaken) as err:
        engine.ensure_network(name, selector(*SECOND))
    assert "belongs to kiln environment shop/eu-prod, not shop-eu/prod" in err.value.message
    assert "Rename the app or the environment 'prod'" in (err.value.hint or "")
    engine.remove_network(name, selector(*SECOND))
    assert engine.networks[name]["kiln.env"] == "eu-prod"  # still there, still the first's
    engine.ensure_network(name, selector(*FIRST))  # its owner uses it as before
    engine.remove_network(name, selector(*FIRST))
    assert name not in engine.networks


@pytest.mark.parametrize(("have", "want", "refused"), [
    ({"kiln.app": "shop", "kiln.env": "eu-prod"}, selector(*SECOND), True),
    ({"kiln.app": "shop", "kiln.env": "eu-prod", "kiln.role": "router"}, selector(*FIRST), False),
    ({}, selector(*SECOND), False),  # not kiln's: left to the engine (creating it fails there)
    ({"kiln.app": "shop-eu"}, selector(*SECOND), True),  # an environment-less object of the app
])
def test_check_owner(have, want, refused):
    if refused:
        with pytest.raises(NameTaken):
            check_owner("router", "kiln-shop-eu-prod-router", have, want)
    else:
        check_owner("router", "kiln-shop-eu-prod-router", have, want)
