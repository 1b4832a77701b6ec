"""Cohort accounting: a cohort per person, ledger entries charged to cohort ranges.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Adds `person_cohorts` (a person's cohort, fixed at first import), `cohort_digests`
(per data version, a digest of each cohort's data, for the officer, and the cohorts
the import reopened, which enter replay keys),
`ledger_cohort_ranges` (the cohorts each ledger entry is charged to) and the ledger
column `data_key`. Existing data and ledger are carried over:

- every person in the registry gets their cohort now, by the rule imports use (the
  month of their earliest record, no later than the month of the newest data
  version's reference date), attributed to that data version;
- every existing ledger entry is charged to every cohort ("0000-00".."9999-99"): it
  was answered before cohorts existed and may have read anyone;
- no digests are written for the existing data version (the next import compares
  with nothing); old entries keep `data_key` NULL and replay by their data version.

The rule is frozen here (not imported from the package) so this migration means the
same thing whatever the code around it becomes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DATED = (
    ("assessments", "assessed_on"),
    ("certificates", "issued_on"),
    ("recognition_requests", "received_on"),
    ("appeals", "lodged_on"),
)


def upgrade() -> None:
    op.create_table(
        "person_cohorts",
        sa.Column("candidate_id", sa.String(length=64), nullable=False),
        sa.Column("cohort", sa.String(length=7), nullable=False),
        sa.Column("data_version", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("candidate_id"),
    )
    op.create_index("ix_person_cohorts_cohort", "person_cohorts", ["cohort"], unique=False)
    op.create_table(
        "cohort_digests",
        sa.Column("data_version", sa.String(length=64), nullable=False),
        sa.Column("cohort", sa.String(length=7), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reopened", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("data_version", "cohort"),
    )
    op.create_table(
        "ledger_cohort_ranges",
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("first", sa.String(length=7), nullable=False),
        sa.Column("last", sa.String(length=7), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["ledger_entries.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("entry_id", "first"),
    )
    op.create_index(
        "ix_ledger_cohort_ranges_first_last",
        "ledger_cohort_ranges",
        ["first", "last"],
        unique=False,
    )
    op.add_column("ledger_entries", sa.Column("data_key", sa.String(length=64), nullable=True))
    if context.is_offline_mode():
        op.execute(
            "INSERT INTO ledger_cohort_ranges (entry_id, first, last) "
            "SELECT id, '0000-00', '9999-99' FROM ledger_entries"
        )
        return
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "INSERT INTO ledger_cohort_ranges (entry_id, first, last) "
            "SELECT id, '0000-00', '9999-99' FROM ledger_entries"
        )
    )
    _assign_existing_persons(bind)


def _assign_existing_persons(bind: sa.Connection) -> None:
    """Give every person of the current registry their cohort (see the module docstring)."""
    newest = bind.execute(
        sa.text("SELECT version, reference_date FROM data_versions ORDER BY id DESC LIMIT 1")
    ).first()
    if newest is None:
        return
    version, reference = newest
    reference_month = str(reference)[:7]  # a date, or ISO text on SQLite
    earliest: dict[str, str] = {}
    for table, column in _DATED:
        rows = bind.execute(
            sa.text(f"SELECT candidate_id, MIN({column}) FROM {table} GROUP BY candidate_id")
        )
        for candidate, day in rows:
            month = str(day)[:7]
            if candidate not in earliest or month < earliest[candidate]:
                earliest[candidate] = month
    people = bind.execute(sa.text("SELECT candidate_id FROM candidates")).scalars().all()
    rows_out = [
        {
            "candidate_id": candidate,
            "cohort": min(earliest.get(candidate, reference_month), reference_month),
            "data_version": version,
        }
        for candidate in people
    ]
    table = sa.table(
        "person_cohorts",
        sa.column("candidate_id", sa.String),
        sa.column("cohort", sa.String),
        sa.column("data_version", sa.String),
    )
    for start in range(0, len(rows_out), 5_000):
        bind.execute(sa.insert(table), rows_out[start : start + 5_000])


def downgrade() -> None:
    # Cohort charges are dropped with their table; entries keep their totals, which
    # the node-wide sums of 0004 count in full (so a downgrade can only over-count).
    op.drop_column("ledger_entries", "data_key")
    op.drop_index("ix_ledger_cohort_ranges_first_last", table_name="ledger_cohort_ranges")
    op.drop_table("ledger_cohort_ranges")
    op.drop_table("cohort_digests")
    op.drop_index("ix_person_cohorts_cohort", table_name="person_cohorts")
    op.drop_table("person_cohorts")
