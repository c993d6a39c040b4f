"""unit directory: the region path of every unit, for the reach of ops, regulator and supervisor

Revision ID: 0003_unit_directory
Revises: 0002_level_roles
"""
from alembic import op
import sqlalchemy as sa


revision = "0003_unit_directory"
down_revision = "0002_level_roles"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("unit_regions",
                    sa.Column("unit_id", sa.String(length=32), nullable=False),
                    sa.Column("region_path", sa.String(length=400), nullable=False),
                    sa.Column("name", sa.String(length=200), nullable=False, server_default=""),
                    sa.PrimaryKeyConstraint("unit_id"))
    with op.batch_alter_table("unit_regions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_unit_regions_region_path"), ["region_path"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("unit_regions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_unit_regions_region_path"))
    op.drop_table("unit_regions")
