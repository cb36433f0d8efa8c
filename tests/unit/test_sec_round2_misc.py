"""Issue 25, finding 8: `kiln agent install` writes KILN_LEDGER_URL into a unit file every user
can read, so it refuses a URL holding a password wherever the password sits: user:password@ (any
user, any characters, percent-encoded or not), a query parameter naming one (libpq's password,
sslpassword…, or pwd), or libpq's keyword form. A URL without one still passes."""

from __future__ import annotations

import pytest

from kiln.agent.install import settings_of
from kiln.errors import UsageError

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
