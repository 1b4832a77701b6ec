"""Request ids are unique per requester, not node-wide.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07

A node-wide unique request id let one requester claim ids another would use (and so
block its audit). The constraint becomes (requester, request_id). Existing rows
already satisfy it. SQLite cannot alter constraints, so the table is rebuilt in
batch mode with its AUTOINCREMENT kept, and the id sequence is carried over so the
id of a cancelled entry is never reused.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ledger_table(unique: list[str], name: str) -> sa.Table:
    """The ledger table as it is before the change (frozen here: batch mode copies it)."""
    return sa.Table(
        "ledger_entries",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("requester", sa.String(length=200), nullable=False),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("template_version", sa.String(length=16), nullable=False),
        sa.Column("query_hash", sa.String(length=64), nullable=False),
        sa.Column("data_version", sa.String(length=64), nullable=False),
        sa.Column("mechanism", sa.String(length=32), nullable=False),
        sa.Column("rho_units", sa.BigInteger(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=True),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(*unique, name=name),
        sa.Index("ix_ledger_requester_period", "requester", "period"),
        sa.Index("ix_ledger_query", "query_hash", "data_version"),
        sqlite_autoincrement=True,
    )


def _swap(drop: str, create: str, old: list[str], new: list[str]) -> None:
    bind = op.get_bind()
    sequence = None
    if bind.dialect.name == "sqlite" and not context.is_offline_mode():
        sequence = bind.execute(
            sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'ledger_entries'")
        ).scalar()
    with op.batch_alter_table(
        "ledger_entries",
        copy_from=_ledger_table(old, drop),
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        batch.drop_constraint(drop, type_="unique")
        batch.create_unique_constraint(create, new)
    if sequence is not None:
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = 'ledger_entries'"),
            {"seq": sequence},
        )


def upgrade() -> None:
    _swap(
        "uq_ledger_request_id",
        "uq_ledger_requester_request_id",
        ["request_id"],
        ["requester", "request_id"],
    )


def downgrade() -> None:
    # Fails (and changes nothing) if two requesters have used the same id since.
    _swap(
        "uq_ledger_requester_request_id",
        "uq_ledger_request_id",
        ["requester", "request_id"],
        ["request_id"],
    )
