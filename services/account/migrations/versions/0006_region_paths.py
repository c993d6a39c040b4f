"""region paths: the materialised path of every region, for subtree reach

Revision ID: 0006_region_paths
Revises: 0005_activity
"""
from alembic import op
import sqlalchemy as sa


revision = "0006_region_paths"
down_revision = "0005_activity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("path", sa.String(length=400), nullable=True))
    # Existing regions: walk the tree from the roots down.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, parent_id FROM regions")).all()
    children: dict = {}
    for rid, parent in rows:
        children.setdefault(parent, []).append(rid)
    todo = [(rid, f"/{rid}/") for rid in children.get(None, [])]
    while todo:
        rid, path = todo.pop()
        conn.execute(sa.text("UPDATE regions SET path = :path WHERE id = :id"), {"path": path, "id": rid})
        todo.extend((child, f"{path}{child}/") for child in children.get(rid, []))
    conn.execute(sa.text("UPDATE regions SET path = '/' || id || '/' WHERE path IS NULL"))  # orphans: own root
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.alter_column("path", existing_type=sa.String(length=400), nullable=False)
        batch_op.create_index(batch_op.f("ix_regions_path"), ["path"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("regions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_regions_path"))
        batch_op.drop_column("path")
