"""a rejected draft keeps every decision of the round that returned it

Revision ID: 0007_review_decisions
Revises: 0006_petition_drafts
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_review_decisions'
down_revision = '0006_petition_drafts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('review_decisions', sa.JSON(), server_default='[]', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('drafts', schema=None) as batch_op:
        batch_op.drop_column('review_decisions')
