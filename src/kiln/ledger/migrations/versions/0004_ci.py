"""pipeline runs, their steps and logs, webhook deliveries

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ci_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('app', sa.String(length=64), server_default='', nullable=False),
    sa.Column('repo', sa.Text(), nullable=False),
    sa.Column('spec', sa.String(length=256), nullable=False),
    sa.Column('ref', sa.String(length=256), nullable=False),
    sa.Column('queue', sa.Text(), nullable=False),
    sa.Column('commit', sa.String(length=64), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('image', sa.String(length=128), server_default='', nullable=False),
    sa.Column('worker', sa.String(length=300), server_default='', nullable=False),
    sa.Column('cancel', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_ci_runs_queue_state', 'ci_runs', ['queue', 'state'], unique=False)
    op.create_table('ci_deliveries',
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('delivery', sa.String(length=128), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('source', 'delivery')
    )
    op.create_table('ci_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), server_default='', nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['ci_runs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_ci_steps_run_id'), 'ci_steps', ['run_id'], unique=False)
    op.create_table('ci_logs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step_id', sa.Integer(), nullable=True),
    sa.Column('line', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['ci_runs.id'], ),
    sa.ForeignKeyConstraint(['step_id'], ['ci_steps.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_ci_logs_run_id'), 'ci_logs', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_ci_logs_run_id'), table_name='ci_logs')
    op.drop_table('ci_logs')
    op.drop_index(op.f('ix_ci_steps_run_id'), table_name='ci_steps')
    op.drop_table('ci_steps')
    op.drop_table('ci_deliveries')
    op.drop_index('ix_ci_runs_queue_state', table_name='ci_runs')
    op.drop_table('ci_runs')
