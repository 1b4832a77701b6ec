"""Revocation reconciliation: the origins checked per run and the matches found.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Only adds tables; registry, ledger and query log are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("requester", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("origin_municipality", sa.String(length=32), nullable=False),
        sa.Column("references", sa.Integer(), nullable=False),
        sa.Column("matches", sa.Integer(), nullable=False),
        sa.Column("data_version", sa.String(length=64), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "requester", "run_id", "origin_municipality", name="uq_reconcile_check"
        ),
    )
    op.create_table(
        "reconciliation_matches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("requester", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("certificate_id", sa.String(length=64), nullable=False),
        sa.Column("origin_municipality", sa.String(length=32), nullable=False),
        sa.Column("origin_certificate_no", sa.String(length=64), nullable=False),
        sa.Column("revoked_on", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("requester", "run_id", "certificate_id", name="uq_reconcile_match"),
    )
    op.create_index(
        "ix_reconciliation_matches_run_id", "reconciliation_matches", ["run_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_reconciliation_matches_run_id", table_name="reconciliation_matches")
    op.drop_table("reconciliation_matches")
    op.drop_table("reconciliation_checks")
