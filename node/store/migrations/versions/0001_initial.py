"""Initial node schema: registry, data versions, privacy ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

The schema of release 0.1 exactly as `create_schema` (`Base.metadata.create_all`)
made it before migrations existed, so such databases can be adopted by stamping.
Frozen: never edit; change the schema in a new revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # --- registry ---
    op.create_table(
        "municipality",
        sa.Column("municipality_code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.PrimaryKeyConstraint("municipality_code"),
    )
    op.create_table(
        "providers",
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("provider_type", sa.String(length=32), nullable=False),
        sa.Column("accreditation_status", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("provider_id"),
    )
    op.create_table(
        "qualifications",
        sa.Column("qualification_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("isco_code", sa.String(length=4), nullable=False),
        sa.Column("eqf_level", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("qualification_id"),
    )
    op.create_table(
        "candidates",
        sa.Column("candidate_id", sa.String(length=64), nullable=False),
        sa.Column("national_id", sa.String(length=64), nullable=True),
        sa.Column("given_name", sa.String(length=200), nullable=False),
        sa.Column("family_name", sa.String(length=200), nullable=False),
        sa.Column("date_of_birth", sa.Date(), nullable=False),
        sa.Column("sex", sa.String(length=16), nullable=False),
        sa.Column("citizenship", sa.String(length=2), nullable=True),
        sa.PrimaryKeyConstraint("candidate_id"),
    )
    op.create_table(
        "assessments",
        sa.Column("assessment_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.String(length=64), nullable=False),
        sa.Column("qualification_id", sa.String(length=64), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("attempt_no", sa.Integer(), nullable=False),
        sa.Column("assessed_on", sa.Date(), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.candidate_id"]),
        sa.ForeignKeyConstraint(["provider_id"], ["providers.provider_id"]),
        sa.ForeignKeyConstraint(["qualification_id"], ["qualifications.qualification_id"]),
        sa.PrimaryKeyConstraint("assessment_id"),
    )
    op.create_index("ix_assessments_candidate_id", "assessments", ["candidate_id"])
    op.create_table(
        "certificates",
        sa.Column("certificate_id", sa.String(length=64), nullable=False),
        sa.Column("certificate_no", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.String(length=64), nullable=False),
        sa.Column("qualification_id", sa.String(length=64), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("pathway", sa.String(length=32), nullable=False),
        sa.Column("origin_municipality", sa.String(length=32), nullable=True),
        sa.Column("origin_certificate_no", sa.String(length=64), nullable=True),
        sa.Column("issued_on", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_changed_on", sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.candidate_id"]),
        sa.ForeignKeyConstraint(["provider_id"], ["providers.provider_id"]),
        sa.ForeignKeyConstraint(["qualification_id"], ["qualifications.qualification_id"]),
        sa.PrimaryKeyConstraint("certificate_id"),
    )
    op.create_index("ix_certificates_candidate_id", "certificates", ["candidate_id"])
    op.create_table(
        "recognition_requests",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.String(length=64), nullable=False),
        sa.Column("qualification_id", sa.String(length=64), nullable=False),
        sa.Column("origin_municipality", sa.String(length=32), nullable=False),
        sa.Column("received_on", sa.Date(), nullable=False),
        sa.Column("decided_on", sa.Date(), nullable=True),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.candidate_id"]),
        sa.ForeignKeyConstraint(["qualification_id"], ["qualifications.qualification_id"]),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index(
        "ix_recognition_requests_candidate_id", "recognition_requests", ["candidate_id"]
    )
    op.create_table(
        "appeals",
        sa.Column("appeal_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.String(length=64), nullable=False),
        sa.Column("subject_type", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("lodged_on", sa.Date(), nullable=False),
        sa.Column("decided_on", sa.Date(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.candidate_id"]),
        sa.PrimaryKeyConstraint("appeal_id"),
    )
    op.create_index("ix_appeals_candidate_id", "appeals", ["candidate_id"])
    op.create_table(
        "employment_outcomes",
        sa.Column("outcome_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.String(length=64), nullable=False),
        sa.Column("certificate_id", sa.String(length=64), nullable=False),
        sa.Column("months_after", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("in_field", sa.Boolean(), nullable=True),
        sa.Column("monthly_earnings", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.candidate_id"]),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificates.certificate_id"]),
        sa.PrimaryKeyConstraint("outcome_id"),
    )
    op.create_index("ix_employment_outcomes_candidate_id", "employment_outcomes", ["candidate_id"])
    op.create_index(
        "ix_employment_outcomes_certificate_id", "employment_outcomes", ["certificate_id"]
    )

    # --- data versions ---
    op.create_table(
        "data_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("bundle_digest", sa.String(length=64), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reference_date", sa.Date(), nullable=False),
        sa.Column("row_counts", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )

    # --- privacy ledger ---
    op.create_table(
        "budget_locks",
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )
    op.create_table(
        "ledger_entries",
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
        sa.UniqueConstraint("request_id", name="uq_ledger_request_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_ledger_requester_period", "ledger_entries", ["requester", "period"])
    op.create_index("ix_ledger_query", "ledger_entries", ["query_hash", "data_version"])


def downgrade() -> None:
    for table in (
        "ledger_entries",
        "budget_locks",
        "data_versions",
        "employment_outcomes",
        "appeals",
        "recognition_requests",
        "certificates",
        "assessments",
        "candidates",
        "qualifications",
        "providers",
        "municipality",
    ):
        op.drop_table(table)
