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
    # A user's second factor (signin_models.UserTotp): the sealed secret, the last step used,
    # the enrolment ticket. The per-address sign-in rule needs no column: an address is no
    # longer locked (signin.ADDRESS_POLICY), and old address locks are simply not read.
    op.create_table('user_totp',
    sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('secret_sealed', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True),
    sa.Column('confirmed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('last_step', sa.Integer(), nullable=True),
    sa.Column('pending_failures', sa.Integer(), nullable=False),
    sa.Column('ticket_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('ticket_expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('user_id'),
    sa.UniqueConstraint('ticket_hash')
    )


def downgrade() -> None:
    op.drop_table('user_totp')
