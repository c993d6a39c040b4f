"""drafts written from a featured petition answer

Revision ID: 0006_petition_drafts
Revises: 0005_audit_trail
Create Date: 2026-11-23 13:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006_petition_drafts'
down_revision = '0005_audit_trail'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('petition_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.create_index('ix_drafts_petition_id', ['petition_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.drop_index('ix_drafts_petition_id')
        batch_op.drop_column('petition_id')
