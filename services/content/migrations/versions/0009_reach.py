"""targets within the author unit's reach

Revision ID: 0009_reach
Revises: 0008_sealed_clue_contacts
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa


revision = '0009_reach'
down_revision = '0008_sealed_clue_contacts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("reach_regions",
                    sa.Column("region_id", sa.String(length=32), nullable=False),
                    sa.Column("path", sa.String(length=400), nullable=False),
                    sa.PrimaryKeyConstraint("region_id"))
    op.create_table("reach_accounts",
                    sa.Column("account_id", sa.String(length=32), nullable=False),
                    sa.Column("unit_id", sa.String(length=32), nullable=False),
                    sa.Column("region_path", sa.String(length=400), nullable=False),
                    sa.PrimaryKeyConstraint("account_id"))
    # The regions the unit directory already names (each path names every region above it);
    # accounts are learnt from their next event (until then they are out of reach below the
    # province level: the check fails closed).
    conn = op.get_bind()
    known: dict[str, str] = {}
    for (path,) in conn.execute(sa.text("SELECT DISTINCT region_path FROM unit_regions")):
        parts = [p for p in (path or "").split("/") if p]
        for n, part in enumerate(parts):
            known.setdefault(part, "/" + "/".join(parts[:n + 1]) + "/")
    if known:
        regions = sa.table("reach_regions", sa.column("region_id"), sa.column("path"))
        op.bulk_insert(regions, [{"region_id": k, "path": v} for k, v in known.items()])


def downgrade() -> None:
    op.drop_table("reach_accounts")
    op.drop_table("reach_regions")
