"""review chains of three levels at least (in code); who wrote each reviewed version; reach tables

Revision ID: 0007_revision_authors
Revises: 0006_review_trace
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_revision_authors'
down_revision = '0006_review_trace'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Who wrote or edited each reviewed version: they decide none of its levels.
    op.create_table("review_editors",
                    sa.Column("review_id", sa.String(length=32), nullable=False),
                    sa.Column("user_id", sa.String(length=32), nullable=False),
                    sa.ForeignKeyConstraint(["review_id"], ["reviews.id"]),
                    sa.PrimaryKeyConstraint("review_id", "user_id"))
    # Region and account paths: the last approval checks the item's targets are within reach.
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
    op.drop_table("review_editors")
