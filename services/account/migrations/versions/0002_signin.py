"""sign-in: refresh tokens, failed sign-in tracking, client credential rotation

Revision ID: 0002_signin
Revises: 36c3db330e77
"""
revision = "0002_signin"
down_revision = "36c3db330e77"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
