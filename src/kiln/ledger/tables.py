"""The declarative base every ledger table derives from.

schema.py (releases, rollouts, events, locks, tokens…) and ci_schema.py (the pipeline's tables)
each import `Table` from here, so neither imports the other; whoever needs the whole schema
imports both (Alembic's environment, migrations/env.py)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Table(DeclarativeBase):
    pass

