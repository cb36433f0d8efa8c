"""locks; rollouts.phase and rollouts.data

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('locks',
    sa.Column('app', sa.String(length=64), nullable=False),
    sa.Column('env', sa.String(length=64), nullable=False),
    sa.Column('token', sa.String(length=32), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('acquired_at', sa.DateTime(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(), nullable=False),
    sa.Column('lease_seconds', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('app', 'env')
    )
    # Existing rollouts get an empty phase and no data; server defaults fill them in.
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phase', sa.String(length=32), server_default='', nullable=False))
        batch_op.add_column(sa.Column('data', sa.Text(), server_default='{}', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_column('data')
        batch_op.drop_column('phase')

    op.drop_table('locks')
