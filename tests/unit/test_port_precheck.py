"""A port another kiln environment holds: the error names it, and comes before any bake."""

from __future__ import annotations

import pytest

from kiln.errors import PortInUse
from kiln.spec.loader import load_spec
from kiln.usecases.deploy import deploy
from unit.world import SPEC, World


def test_a_port_held_by_another_kiln_environment_is_named_and_nothing_is_baked(tmp_path):
    w = World.make(tmp_path)
    deploy(w.ctx, w.load(), "production")  # shop/production holds 18080 (and 19080 for previews)
    other = tmp_path / "other"
    other.mkdir()
    (other / "app.py").write_text("print('other')\n")
    (other / "kiln.yaml").write_text(SPEC.replace("app: shop", "app: other").replace("port: 18081", "port: 18082"))
    builds_before = list(w.engine.image_store)

    with pytest.raises(PortInUse) as caught:
        deploy(w.ctx, load_spec(other / "kiln.yaml"), "production")
    assert caught.value.message == "port 18080 on 127.0.0.1 is used by kiln environment shop/production."
    assert "kiln destroy -e production" in (caught.value.hint or "")
    assert list(w.engine.image_store) == builds_before  # refused before the bake
    assert w.ctx.ledger.releases.of("other", "production") == []
    assert set(w.serving().values()) == {1}  # shop keeps serving
