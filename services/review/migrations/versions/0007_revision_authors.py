"""review chains of three levels at least; who wrote each revision

Revision ID: 0007_revision_authors
Revises: 0006_review_trace
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007_revision_authors'
down_revision = '0006_review_trace'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
