"""accounts carry their region path (targeting a subtree does not wait for region events)

Revision ID: 0006_account_region_path
Revises: 0005_trace_parents
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0006_account_region_path"
down_revision = "0005_trace_parents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("region_path", sqlmodel.sql.sqltypes.AutoString(length=1000), server_default="",
                                   nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("region_path")
