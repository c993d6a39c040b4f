"""activity: last publication per account, dormancy watch, monthly counts

Revision ID: 0005_activity
Revises: 0004_inspections
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0005_activity"
down_revision = "0004_inspections"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('account_activity',
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('last_published_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('last_item_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('stage_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('dormant', sa.Boolean(), nullable=False),
    sa.Column('dormant_since', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('account_id')
    )
    with op.batch_alter_table('account_activity', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_activity_stage'), ['stage'], unique=False)

    op.create_table('account_published_items',
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('item_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('month', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
    sa.Column('first_published_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'item_id')
    )


def downgrade() -> None:
    op.drop_table('account_published_items')
    with op.batch_alter_table('account_activity', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_activity_stage'))

    op.drop_table('account_activity')
