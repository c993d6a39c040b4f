"""imports: hotline work orders and comments from accounts (source_ref, unique), the account read model

Revision ID: 0004_imports
Revises: 0003_featured
Create Date: 2026-11-23 16:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004_imports'
down_revision = '0003_featured'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('petition_accounts',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('unit_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('petition_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_petition_accounts_unit_id'), ['unit_id'], unique=False)

    with op.batch_alter_table('petitions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_ref', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column('source_account_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column('imported_by', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    # An index, not a constraint: it has a name on both databases, and NULLs (public intake) never clash.
    op.create_index('ux_petitions_source_ref', 'petitions', ['source_ref'], unique=True)


def downgrade() -> None:
    op.drop_index('ux_petitions_source_ref', table_name='petitions')
    with op.batch_alter_table('petitions', schema=None) as batch_op:
        batch_op.drop_column('imported_by')
        batch_op.drop_column('source_account_id')
        batch_op.drop_column('source_ref')
    with op.batch_alter_table('petition_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_petition_accounts_unit_id'))
    op.drop_table('petition_accounts')
