"""inspections: check rounds, results, rectification, measures

Revision ID: 0004_inspections
Revises: 0003_lifecycle
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004_inspections"
down_revision = "0003_lifecycle"
branch_labels = None
depends_on = None

_STR = sqlmodel.sql.sqltypes.AutoString
_TS = sqlmodel.sql.sqltypes.UTCDateTime


def _indexes(table: str, *columns: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column in columns:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def _drop(table: str, *columns: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        for column in columns:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))
    op.drop_table(table)


def upgrade() -> None:
    op.create_table(
        "inspections",
        sa.Column("id", _STR(length=32), nullable=False),
        sa.Column("title", _STR(length=200), nullable=False),
        sa.Column("region_id", _STR(), nullable=False),
        sa.Column("scope", _STR(length=10), nullable=False),
        sa.Column("sample_size", sa.Integer(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("population", sa.Integer(), nullable=False),
        sa.Column("opened_by", _STR(length=32), nullable=False),
        sa.Column("opened_at", _TS(), nullable=False),
        sa.ForeignKeyConstraint(["region_id"], ["regions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    _indexes("inspections", "region_id")

    op.create_table(
        "inspection_accounts",
        sa.Column("id", _STR(length=32), nullable=False),
        sa.Column("inspection_id", _STR(), nullable=False),
        sa.Column("account_id", _STR(), nullable=False),
        sa.Column("unit_id", _STR(length=32), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("veto", _STR(length=40), nullable=True),
        sa.Column("notes", _STR(length=2000), nullable=True),
        sa.Column("recorded_by", _STR(length=32), nullable=True),
        sa.Column("recorded_at", _TS(), nullable=True),
        sa.Column("previous", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("inspection_id", "account_id", name="uq_inspection_accounts_round_account"),
    )
    _indexes("inspection_accounts", "account_id", "inspection_id", "unit_id")

    op.create_table(
        "rectifications",
        sa.Column("id", _STR(length=32), nullable=False),
        sa.Column("inspection_id", _STR(), nullable=False),
        sa.Column("account_id", _STR(), nullable=False),
        sa.Column("unit_id", _STR(length=32), nullable=False),
        sa.Column("deadline", sa.Date(), nullable=False),
        sa.Column("requirement", _STR(length=2000), nullable=False),
        sa.Column("ordered_by", _STR(length=32), nullable=False),
        sa.Column("ordered_at", _TS(), nullable=False),
        sa.Column("done_at", _TS(), nullable=True),
        sa.Column("done_by", _STR(length=32), nullable=True),
        sa.Column("done_note", _STR(length=2000), nullable=True),
        sa.Column("overdue_flagged_at", _TS(), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    _indexes("rectifications", "account_id", "deadline", "inspection_id", "unit_id")

    op.create_table(
        "inspection_measures",
        sa.Column("id", _STR(length=32), nullable=False),
        sa.Column("inspection_id", _STR(), nullable=False),
        sa.Column("account_id", _STR(), nullable=False),
        sa.Column("unit_id", _STR(length=32), nullable=False),
        sa.Column("kind", _STR(length=20), nullable=False),
        sa.Column("note", _STR(length=2000), nullable=True),
        sa.Column("document_ref", _STR(length=200), nullable=True),
        sa.Column("recorded_by", _STR(length=32), nullable=False),
        sa.Column("recorded_at", _TS(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["inspection_id"], ["inspections.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    _indexes("inspection_measures", "account_id", "inspection_id", "unit_id")


def downgrade() -> None:
    _drop("inspection_measures", "unit_id", "inspection_id", "account_id")
    _drop("rectifications", "unit_id", "inspection_id", "deadline", "account_id")
    _drop("inspection_accounts", "unit_id", "inspection_id", "account_id")
    _drop("inspections", "region_id")
