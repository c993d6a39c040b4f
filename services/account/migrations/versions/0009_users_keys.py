"""users managed by ops, token revocation, signing keys sealed at rest

Revision ID: 0009_users_keys
Revises: 0008_calendar
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009_users_keys'
down_revision = '0008_calendar'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
