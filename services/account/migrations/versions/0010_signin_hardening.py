"""sign-in hardening: second factor (TOTP)

Revision ID: 0010_signin_hardening
Revises: 0009_users_keys
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0010_signin_hardening'
down_revision = '0009_users_keys'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
