"""news-clue contacts sealed

The clear columns `clues.contact_name` / `contact_phone` become `contact_name_enc` /
`contact_phone_enc`, sealed with the content keyring (CONTENT_DATA_KEY; services/content/
clues.py), each value bound to its row. Existing clues are sealed here, in batches, in the
same transaction as the schema change: after this revision no contact is in clear. The key
is read only when a clue has a contact (so the migrate container needs CONTENT_DATA_KEY, as
the service does). Downgrade opens them back into the clear columns (the old code reads
them there), which needs the same key.

Revision ID: 0008_sealed_clue_contacts
Revises: 0007_review_decisions
Create Date: 2026-12-06
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008_sealed_clue_contacts'
down_revision = '0007_review_decisions'
branch_labels = None
depends_on = None

BATCH = 1000


def _keyring():
    from services.content.clues import keyring_of
    from services.content.service import load_settings
    return keyring_of(load_settings())


def _batches(bind, table, id_col, where):
    after = ''
    while True:
        rows = bind.execute(sa.select(*table.c).where(where, id_col > after).order_by(id_col).limit(BATCH)).all()
        if not rows:
            return
        yield rows
        after = rows[-1].id


def upgrade() -> None:
    with op.batch_alter_table('clues', schema=None) as batch_op:
        batch_op.add_column(sa.Column('contact_name_enc', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('contact_phone_enc', sa.Text(), nullable=True))

    bind = op.get_bind()
    clues = sa.table('clues', sa.column('id'), sa.column('contact_name'), sa.column('contact_phone'),
                     sa.column('contact_name_enc'), sa.column('contact_phone_enc'))
    keyring = None
    for rows in _batches(bind, clues, clues.c.id,
                         sa.or_(clues.c.contact_name.is_not(None), clues.c.contact_phone.is_not(None))):
        keyring = keyring or _keyring()
        for row in rows:
            bind.execute(clues.update().where(clues.c.id == row.id).values(
                contact_name_enc=keyring.seal(row.contact_name, table='clues', row=row.id, field='contact_name'),
                contact_phone_enc=keyring.seal(row.contact_phone, table='clues', row=row.id, field='contact_phone')))

    with op.batch_alter_table('clues', schema=None) as batch_op:
        batch_op.drop_column('contact_phone')
        batch_op.drop_column('contact_name')


def downgrade() -> None:
    with op.batch_alter_table('clues', schema=None) as batch_op:
        batch_op.add_column(sa.Column('contact_name', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True))
        batch_op.add_column(sa.Column('contact_phone', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True))

    bind = op.get_bind()
    clues = sa.table('clues', sa.column('id'), sa.column('contact_name'), sa.column('contact_phone'),
                     sa.column('contact_name_enc'), sa.column('contact_phone_enc'))
    keyring = None
    for rows in _batches(bind, clues, clues.c.id,
                         sa.or_(clues.c.contact_name_enc.is_not(None), clues.c.contact_phone_enc.is_not(None))):
        keyring = keyring or _keyring()
        for row in rows:
            bind.execute(clues.update().where(clues.c.id == row.id).values(
                contact_name=keyring.open(row.contact_name_enc, table='clues', row=row.id, field='contact_name'),
                contact_phone=keyring.open(row.contact_phone_enc, table='clues', row=row.id, field='contact_phone')))

    with op.batch_alter_table('clues', schema=None) as batch_op:
        batch_op.drop_column('contact_phone_enc')
        batch_op.drop_column('contact_name_enc')
