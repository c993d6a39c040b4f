"""NATS credentials of matrix clients (delivery mode `nats`)

The client keys the account service issued (public keys only) with their revocation, and the
one row that says what the last push of the CLIENTS account's JWT to the NATS servers held
(services/account/nats_clients.py).

Revision ID: 0011_nats_keys
Revises: 0010_signin_hardening
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0011_nats_keys'
down_revision = '0010_signin_hardening'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('nats_client_keys',
    sa.Column('public_key', sqlmodel.sql.sqltypes.AutoString(length=56), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('issued_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('public_key')
    )
    with op.batch_alter_table('nats_client_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_nats_client_keys_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_nats_client_keys_revoked_at'), ['revoked_at'], unique=False)
    pushes = op.create_table('nats_revocation_pushes',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('revoked_count', sa.Integer(), nullable=False),
    sa.Column('iat', sa.Integer(), nullable=False),
    sa.Column('pushed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    # The one row replicas lock to push one after another (it exists before any of them starts).
    op.bulk_insert(pushes, [{"id": "clients", "revoked_count": 0, "iat": 0, "pushed_at": None}])


def downgrade() -> None:
    op.drop_table('nats_revocation_pushes')
    with op.batch_alter_table('nats_client_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_nats_client_keys_revoked_at'))
        batch_op.drop_index(batch_op.f('ix_nats_client_keys_account_id'))
    op.drop_table('nats_client_keys')
