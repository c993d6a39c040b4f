"""news-clue contacts sealed

Revision ID: 0008_sealed_clue_contacts
Revises: 0007_review_decisions
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008_sealed_clue_contacts'
down_revision = '0007_review_decisions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
