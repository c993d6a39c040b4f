"""targets within the author unit's reach

Revision ID: 0009_reach
Revises: 0008_sealed_clue_contacts
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009_reach'
down_revision = '0008_sealed_clue_contacts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
