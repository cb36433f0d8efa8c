"""Issue 25, findings 8 and 10(a).

8: `kiln agent install` writes KILN_LEDGER_URL into a unit file every user can read, so it refuses
a URL holding a password wherever the password sits: user:password@ (any user, any characters,
percent-encoded or not), a query parameter naming one (libpq's password, sslpassword…, or pwd),
or libpq's keyword form. A URL without one still passes.

10(a): a CI run step and its sidecar start hardened as docs/security.md (item 12) says: a read-only
root unless the step says `read_only: false`, tmpfs only at the paths given, the fixed STEP_LIMITS
and SIDECAR_LIMITS, no capability added (the provider drops them all), no-new-privileges, an init,
no port, bind or device from the host. Checked on the ContainerSpec the fake engine was given and
on the `docker create` arguments the Docker provider makes of it."""

from __future__ import annotations

import threading

import pytest

from kiln.agent.install import settings_of
from kiln.bake.baker import BakedImage
from kiln.ci.logsink import StepLog
from kiln.ci.steps import StepContext, run_command
from kiln.errors import UsageError
from kiln.ledger.ci_store import CiStore
from kiln.providers.base import SIDECAR_LIMITS, STEP_LIMITS, ContainerSpec
from kiln.providers.docker_api import create_args
from kiln.spec.hardening import Hardening
from kiln.spec.pipeline import Step
from unit.world import World

# --- 8: no ledger password in a unit file ----------------------------------------------------


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://kiln:s3cret@db/kiln",
    "postgresql+psycopg://:s3cret@db/kiln",  # an empty user
    "postgresql+psycopg://kiln:@db/kiln",  # an empty one: refused as the form, whatever it holds
    "postgresql+psycopg://kiln:s3%40cr%2Fet@db/kiln",  # percent-encoded
    "postgresql+psycopg://kiln:s3/cr?et@db/kiln",  # '/' and '?' in it: SQLAlchemy still reads a password
    "postgresql+psycopg://kiln%3As3cret@db/kiln",  # the ':' itself encoded
    "postgresql+psycopg://kiln@db/kiln?password=s3cret",
    "postgresql+psycopg://kiln@db/kiln?sslmode=require&PassWord=s3cret",
    "postgresql+psycopg://kiln@db/kiln?sslmode=require&sslpassword=s3cret",
    "postgresql+psycopg://kiln@db/kiln?pass%77ord=s3cret",
    "postgresql+psycopg://kiln@db/kiln?PWD=s3cret",
    "host=db dbname=kiln user=kiln password=s3cret",  # libpq's keyword form
    "host=db password = s3cret",
    "password=s3cret host=db",
])
def test_a_ledger_url_holding_a_password_anywhere_is_refused(url: str) -> None:
    with pytest.raises(UsageError) as err:
        settings_of({"KILN_LEDGER_URL": url})
    assert err.value.message.startswith("KILN_LEDGER_URL holds a password (")
    assert "readable by every user" in err.value.message and "s3cret" not in str(err.value)  # nor in the error
    assert "KILN_LEDGER_URL_FILE" in (err.value.hint or "")


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://kiln@db/kiln?sslmode=require",
    "postgresql+psycopg://kiln@db:5432/kiln?passfile=/etc/kiln/pgpass",  # a file's path, not a password
    "postgresql+psycopg://db/kiln",
    "sqlite:////var/lib/kiln/ledger.db",
    "host=db dbname=kiln user=kiln sslmode=require",
])
def test_a_ledger_url_without_a_password_is_passed_on(url: str) -> None:
    assert settings_of({"KILN_LEDGER_URL": url}) == {"KILN_LEDGER_URL": url}


# --- 10(a): CI step containers are hardened ----------------------------------------------------


def run_step(w: World, step: dict[str, object]) -> dict[str, ContainerSpec]:
    """`step` run by kiln.ci.steps.run_command on the fake engine: the specs it started, by name."""
    store = CiStore(w.ctx.ledger)
    run, _ = store.enqueue(repo=str(w.root), spec="kiln.yaml", ref="refs/heads/main", queue="q", commit="c" * 40,
                           trigger="cli", app="shop")
    image = BakedImage(id=w.engine.add_image("kiln/shop:test"), tag="kiln/shop:test", inputs_hash="i" * 64,
                       commit=None, dirty=False, built=True)
    log = StepLog(store, run.id, None, lambda line: line, None, "test")
    sc = StepContext(w.ctx, store, run, step_id=1, position=1, loaded=w.load(), image=image, log=log,
                     secret=lambda _name: None, cancelled=threading.Event())
    started: dict[str, ContainerSpec] = {}
    real = w.engine.start

    def start(spec: ContainerSpec):  # type: ignore[no-untyped-def]
        started[spec.name] = spec
        return real(spec)

    w.engine.start = start  # type: ignore[method-assign]
    assert run_command(sc, Step.model_validate(step)) == "exit code 0"
    return started


def assert_hardened(spec: ContainerSpec, read_only: bool, writable: tuple[str, ...], limits: object) -> None:
    assert spec.hardening == Hardening(read_only=read_only, writable=writable), spec.name  # no cap, no-new-privs, no user
    assert spec.limits == limits, spec.name
    assert not (spec.publish or spec.binds or spec.ro_binds or spec.devices), spec.name
    args = create_args(spec, {}, spec.environment)  # what dockerd is asked for
    assert args["read_only"] is read_only and set(args["tmpfs"]) == set(writable), spec.name
    assert args["cap_drop"] == ["ALL"] and args["cap_add"] is None and args["init"] is True, spec.name
    assert args["security_opt"] == ["no-new-privileges:true"], spec.name
    assert "volumes" not in args and "ports" not in args and "devices" not in args, spec.name


def test_a_run_step_and_its_sidecar_start_hardened(w: World) -> None:
    started = run_step(w, {"name": "test", "run": "make test", "services": {"db": {"command": "postgres"}}})
    assert set(started) == {"kiln-ci-1-1-step", "kiln-ci-1-1-db"}
    assert_hardened(started["kiln-ci-1-1-step"], True, ("/tmp",), STEP_LIMITS)
    assert_hardened(started["kiln-ci-1-1-db"], True, ("/tmp",), SIDECAR_LIMITS)


def test_a_step_is_writable_only_where_and_as_far_as_it_says(w: World) -> None:
    started = run_step(w, {"name": "test", "run": "make test", "read_only": False, "writable": ["/cache"],
                           "services": {"db": {"command": "postgres", "writable": ["/var/lib/db", "/run"]}}})
    assert_hardened(started["kiln-ci-1-1-step"], False, ("/cache",), STEP_LIMITS)  # as the step said: nothing more
    assert_hardened(started["kiln-ci-1-1-db"], True, ("/var/lib/db", "/run"), SIDECAR_LIMITS)
