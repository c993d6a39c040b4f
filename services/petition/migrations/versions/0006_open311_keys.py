"""Open311 API keys with scopes

Revision ID: 0006_open311_keys
Revises: 0005_calendar
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006_open311_keys'
down_revision = '0005_calendar'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
