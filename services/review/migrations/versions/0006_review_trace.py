"""reviews keep the submission's trace (W3C traceparent), which decisions continue

Revision ID: 0006_review_trace
Revises: 0005_audit_trail
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0006_review_trace"
down_revision = "0005_audit_trail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("trace_parent", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("trace_parent")
