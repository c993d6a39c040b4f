"""publications and retractions keep their trace (W3C traceparent) for the deliveries' spans

Revision ID: 0005_trace_parents
Revises: 0004_delivery_lease
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0005_trace_parents"
down_revision = "0004_delivery_lease"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("publications", "retractions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("trace_parent", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    for table in ("publications", "retractions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("trace_parent")
