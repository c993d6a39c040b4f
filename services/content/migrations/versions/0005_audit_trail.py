"""audit trail: append-only (triggers refuse UPDATE and DELETE) and hash-chained

Revision ID: 0005_audit_trail
Revises: 0004_urgent_publish_at
"""
from alembic import op
import sqlalchemy as sa

from govmedia_kit.audit import append_only_ddl, drop_append_only_ddl


revision = "0005_audit_trail"
down_revision = "0004_urgent_publish_at"
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


def downgrade() -> None:
    for statement in drop_append_only_ddl("audit_trail", op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("audit_trail")
