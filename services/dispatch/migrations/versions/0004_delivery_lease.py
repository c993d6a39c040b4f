"""webhook claims as leases (issue 7: two replicas of every service)

- deliveries.lease_until, deliveries.lease_owner: a claimed webhook delivery is held by one
  process until its lease expires; a replica starting no longer resets what another has in
  flight. Rows in flight from before this revision have no lease and count as expired.

Revision ID: 0004_delivery_lease
Revises: 0003_delivery_history
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = "0004_delivery_lease"
down_revision = "0003_delivery_history"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("lease_until")
