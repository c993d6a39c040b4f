"""users managed by ops, token revocation, signing keys sealed at rest

The user audit trail (append-only: triggers refuse UPDATE and DELETE, and TRUNCATE on
PostgreSQL; hash-chained, one stream per user) and the token revocation list (subject,
not-before). Signing keys still in clear are sealed by the service when it loads its keys at
start-up (services/account/tokens.py: it needs ACCOUNT_KEY_ENCRYPTION_KEY, which a migration
does not read), before it serves anything.

Revision ID: 0009_users_keys
Revises: 0008_calendar
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel

from govmedia_kit.audit import append_only_ddl, drop_append_only_ddl


revision = '0009_users_keys'
down_revision = '0008_calendar'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_trail',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('stream_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=60), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stream_id', 'seq', name='uq_audit_trail_stream_seq')
    )
    for statement in append_only_ddl("audit_trail", op.get_bind().dialect.name):
        op.execute(statement)
    op.create_table('token_revocations',
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('not_before', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.PrimaryKeyConstraint('subject')
    )
    with op.batch_alter_table('token_revocations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_token_revocations_not_before'), ['not_before'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('token_revocations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_token_revocations_not_before'))
    op.drop_table('token_revocations')
    for statement in drop_append_only_ddl("audit_trail", op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table('audit_trail')
