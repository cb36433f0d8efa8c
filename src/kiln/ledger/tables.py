"""The declarative base every ledger table derives from, and every table at once.

schema.py (releases, rollouts, events, locks, tokens…) and ci_schema.py (the pipeline's tables)
each import `Table` from here, so neither imports the other; `metadata()` imports both, for
whoever needs the whole schema (Alembic's environment)."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase


class Table(DeclarativeBase):
    pass


def metadata() -> MetaData:
    """Every ledger table's metadata (importing the modules that declare them)."""
    from kiln.ledger import ci_schema, schema  # noqa: F401  (their classes register with Table)

    return Table.metadata
