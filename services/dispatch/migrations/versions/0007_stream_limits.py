"""feed stream limits

Revision ID: 0007_stream_limits
Revises: 0006_account_region_path
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007_stream_limits'
down_revision = '0006_account_region_path'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
