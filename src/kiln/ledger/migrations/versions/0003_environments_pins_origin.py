"""environments made by kiln (recreated, previews); pinned releases; releases.origin

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('environments',
    sa.Column('app', sa.String(length=64), nullable=False),
    sa.Column('env', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('origin', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('app', 'env')
    )
    op.create_table('pins',
    sa.Column('app', sa.String(length=64), nullable=False),
    sa.Column('env', sa.String(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('pinned_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('app', 'env', 'number')
    )
    # Existing releases were made by deploys and rollbacks: no origin.
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.drop_column('origin')
    op.drop_table('pins')
    op.drop_table('environments')
