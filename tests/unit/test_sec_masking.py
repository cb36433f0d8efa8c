"""Issue 15, item 13: a secret's value never reaches the ledger or kiln's output unmasked, even
when a hook or an instance prints it: every value a `secret:NAME` reference of the releases in
play resolves to is masked in hook output, instance log tails and smoke-check answers before they
become a rollout's reason, an event, a step's detail or a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import RolloutError
from kiln.secretstore import MASK
from kiln.usecases.deploy import deploy
from unit.world import World

TOKEN = "tok-3f9a1c77e2"  # what secret:api-token resolves to
PIN = "42"  # a two-character secret: masked as a whole word only


@pytest.fixture
def w(tmp_path, monkeypatch) -> World:
    monkeypatch.setenv("KILN_SECRET_API_TOKEN", TOKEN)
    monkeypatch.setenv("KILN_SECRET_PIN", PIN)
    world = World.make(tmp_path)
    world.edit_spec("    rollout:\n", "    environment: {TOKEN: secret:api-token, PIN: secret:pin}\n    rollout:\n")
    return world


def _everything_stored(w: World) -> bytes:
    """The ledger's bytes: the sqlite file and its write-ahead log, as an attacker reading the disk sees them."""
    w.ctx.ledger.db.engine.dispose()
    db = Path(str(w.ctx.settings.ledger_url).removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def _assert_nowhere(w: World, err: RolloutError) -> None:
    printed = err.value.message + str(err.value.hint or "") + "\n".join(m for _, m in w.out.said)
    assert TOKEN not in printed and f"PIN={PIN}" not in printed
    stored = _everything_stored(w)
    assert TOKEN.encode() not in stored and f"PIN={PIN}".encode() not in stored
    assert b"tok-3f9a" not in stored


def test_a_hook_that_prints_its_secret_fails_and_the_secret_is_stored_and_printed_nowhere(w):
    w.edit_spec("      strategy: rolling\n", "      strategy: rolling\n      before_traffic: [migrate]\n")
    w.engine.scripts[("migrate",)] = (1, ["connecting", f"auth failed for token {TOKEN}", f"PIN={PIN} (pin)"])
    with pytest.raises(RolloutError) as err:
        deploy(w.ctx, w.load(), "production")
    assert err.value.message == (
        "the rollout to v1 was aborted: the before_traffic hook `migrate` exited with code 1. Its last output:\n"
        f"connecting\nauth failed for token {MASK}\nPIN={MASK} (pin)")
    rollout = w.rollouts()[-1]
    assert rollout.state == "aborted" and MASK in (rollout.reason or "")
    assert w.instances() == {}  # nothing changed: a first deploy whose hook fails runs nothing
    _assert_nowhere(w, err)


def test_an_instance_that_prints_its_secret_and_exits_is_masked_in_the_reason_and_every_step(w):
    w.engine.scripts[("python3", "/app/app.py")] = (3, [f"TOKEN={TOKEN}", "bye"])
    with pytest.raises(RolloutError) as err:
        deploy(w.ctx, w.load(), "production")
    assert f"Its last output:\nTOKEN={MASK}\nbye" in err.value.message
    assert w.instances("production", "web") == {}
    _assert_nowhere(w, err)
