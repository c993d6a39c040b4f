"""featured answers (精选): when a case's answer was chosen for publication

Revision ID: 0003_featured
Revises: 0002_workflow
Create Date: 2026-11-23 13:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003_featured'
down_revision = '0002_workflow'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('petitions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('featured_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('petitions', schema=None) as batch_op:
        batch_op.drop_column('featured_at')
