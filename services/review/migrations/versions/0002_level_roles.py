"""levels held by several roles: widen holder_role

Revision ID: 0002_level_roles
Revises: 9387210ce4bf
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_level_roles"
down_revision = "9387210ce4bf"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_levels") as batch:
        batch.alter_column("holder_role", type_=sa.String(length=60), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("review_levels") as batch:
        batch.alter_column("holder_role", type_=sa.String(length=20), existing_nullable=False)
