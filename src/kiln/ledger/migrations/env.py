"""Alembic environment: kiln passes the connection in `config.attributes['connection']`."""

from alembic import context

from kiln.ledger import ci_schema, schema  # noqa: F401  (every table registers with Table)
from kiln.ledger.tables import Table

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Table.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
