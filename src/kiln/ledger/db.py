"""The ledger's database: engine, sessions, the schema's Alembic migrations, and the one place
SQLAlchemy's errors become LedgerError (with a hint) before they could reach a user.

SQLite in WAL mode by default, PostgreSQL through a URL. Opening a database brings its schema to
the newest Alembic revision."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session

from kiln.errors import LedgerError
from kiln.private import private_dir, private_file

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision (a unit test checks it against migrations/versions). Knowing it
# here spares importing Alembic, ~0.3 s, on every command once the schema is current.
SCHEMA_HEAD = "0005"

URL_HINT = "Set KILN_LEDGER_URL to sqlite:///PATH or postgresql+psycopg://USER@HOST/DB."
REACH_HINT = "Check KILN_LEDGER_URL and that the database is reachable and writable."


def now() -> datetime:
    """The ledger's clock: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = _shown(url)  # the URL for messages: without its password
        if url.startswith("sqlite:///"):
            file = Path(url.removeprefix("sqlite:///").split("?", 1)[0])  # without URL query options
            folder = file.parent
            try:
                # 0700 directory, 0600 file: SQLite gives its -wal and -shm files the file's mode.
                if file.name and file.name != ":memory:":
                    private_file(file)
                    for extra in (file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
                        if extra.exists():
                            private_file(extra)
                else:
                    private_dir(folder)
            except OSError as exc:
                raise LedgerError(f"cannot open the ledger at {self.shown}: cannot create {folder}: {exc.strerror}.",
                                  REACH_HINT) from None
        try:
            self.engine: Engine = create_engine(url)
        except (ArgumentError, ImportError) as exc:
            raise LedgerError(f"cannot use ledger URL {self.shown!r}: {exc}.", URL_HINT) from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    @contextmanager
    def session(self, *, passing: tuple[type[Exception], ...] = ()) -> Iterator[Session]:
        """A session (use as `with db.session() as s, s.begin():`). Any SQLAlchemy error raised
        in it leaves as a LedgerError, except those of the types in `passing`, which the caller
        handles (say, an IntegrityError that means someone else inserted first)."""
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                yield s
        except passing:
            raise
        except SQLAlchemyError as exc:
            raise failed(self.shown, exc) from None

    def schema_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except (OperationalError, ProgrammingError):
            return None  # a new database: no version table yet (an unreachable one fails in _migrate)

    def _migrate(self) -> None:
        try:
            revision = self.schema_revision()
            if revision == SCHEMA_HEAD:
                return
        except SQLAlchemyError as exc:  # e.g. a file that is not a database
            raise failed(self.shown, exc, "cannot open the ledger at") from None
        from alembic import command
        from alembic.config import Config
        from alembic.util import CommandError

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except CommandError as exc:
            raise LedgerError(
                f"the ledger at {self.shown} has schema revision {revision!r}, which this kiln does not know "
                f"(it knows up to {SCHEMA_HEAD}): {exc}.",
                "It was probably written by a newer kiln: upgrade kiln, or point KILN_LEDGER_URL at another "
                "ledger.") from None
        except SQLAlchemyError as exc:
            raise failed(self.shown, exc, "cannot open the ledger at") from None


def failed(url: str, exc: SQLAlchemyError, what: str = "the ledger failed at") -> LedgerError:
    """The LedgerError for a database error: what went wrong, in one line, and what to check."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return LedgerError(f"{what} {url}: {lines[0] if lines else type(cause).__name__}.", REACH_HINT)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def changed(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE changed (what conditional writes, the lock's and the queue's, test)."""
    return cast(CursorResult[Any], result).rowcount
