"""account lifecycle: filings, steps, platform rules

Revision ID: 0003_lifecycle
Revises: 0002_signin
Create Date: 2026-11-23 05:48:57.915345
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003_lifecycle'
down_revision = '0002_signin'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('approved_platforms',
    sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('approved', sa.Boolean(), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('platform')
    )
    op.create_table('platform_exceptions',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('unit_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('platform', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
    sa.Column('recorded_by', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('unit_id', 'platform', name='uq_platform_exceptions_unit_platform')
    )
    with op.batch_alter_table('platform_exceptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_platform_exceptions_unit_id'), ['unit_id'], unique=False)

    op.create_table('account_steps',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('actor_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('document_ref', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('account_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_steps_account_id'), ['account_id'], unique=False)

    op.create_table('filings',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('account_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('due_on', sa.Date(), nullable=False),
    sa.Column('filed_on', sa.Date(), nullable=True),
    sa.Column('filed_by', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('document_ref', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('overdue_reported_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('filings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_filings_account_id'), ['account_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_filings_due_on'), ['due_on'], unique=False)

    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True))
        batch_op.add_column(sa.Column('meeting_ref', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column('filing_due', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('filed_on', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('close_reason', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True))
        batch_op.add_column(sa.Column('deregistered_on', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('closed_on', sa.Date(), nullable=True))
        batch_op.alter_column('handle',
               existing_type=sa.VARCHAR(length=200),
               nullable=True)
        batch_op.alter_column('opened_on',
               existing_type=sa.DATE(),
               nullable=True)

    with op.batch_alter_table('units', schema=None) as batch_op:
        batch_op.add_column(sa.Column('short_names', sa.JSON(), server_default='[]', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('units', schema=None) as batch_op:
        batch_op.drop_column('short_names')

    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.alter_column('opened_on',
               existing_type=sa.DATE(),
               nullable=False)
        batch_op.alter_column('handle',
               existing_type=sa.VARCHAR(length=200),
               nullable=False)
        batch_op.drop_column('closed_on')
        batch_op.drop_column('deregistered_on')
        batch_op.drop_column('close_reason')
        batch_op.drop_column('filed_on')
        batch_op.drop_column('filing_due')
        batch_op.drop_column('meeting_ref')
        batch_op.drop_column('reason')

    with op.batch_alter_table('filings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_filings_due_on'))
        batch_op.drop_index(batch_op.f('ix_filings_account_id'))

    op.drop_table('filings')
    with op.batch_alter_table('account_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_steps_account_id'))

    op.drop_table('account_steps')
    with op.batch_alter_table('platform_exceptions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_platform_exceptions_unit_id'))

    op.drop_table('platform_exceptions')
    op.drop_table('approved_platforms')
