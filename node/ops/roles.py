"""PostgreSQL roles of a production node: what the read-only query role may read.

A node's aggregations run through a separate engine connected as a role that can
only SELECT the registry (see `NodeService(query_engine=...)`). Should a query ever
be subverted, that role can neither write nor read the ledger or the query log:
privileges, not code, draw the line. The grants are generated from the models so
that docs/operations.md, the tests and a new registry table cannot drift apart.
"""

from __future__ import annotations

from sqlalchemy.dialects import postgresql

from fedaudit.node.store.models import REGISTRY_TABLES, CohortDigest, DataVersion, PersonCohort

QUERY_TABLES: tuple[str, ...] = (
    *(model.__tablename__ for model in REGISTRY_TABLES),
    DataVersion.__tablename__,
    PersonCohort.__tablename__,
    CohortDigest.__tablename__,
)
"""Tables the query role reads: the registry, the data versions (to tag answers), the
persons' cohorts (the `cohort` dimension) and the cohorts' data digests (replay keys)."""


def query_role_grants(role: str, schema: str = "public") -> list[str]:
    """The statements that let `role` read exactly `QUERY_TABLES` in `schema`.

    Run them as the owner role after every `fedaudit node migrate` (a migration
    that adds a registry table changes this list).
    """
    quote = postgresql.dialect().identifier_preparer.quote
    tables = ", ".join(f"{quote(schema)}.{quote(name)}" for name in QUERY_TABLES)
    return [
        f"GRANT USAGE ON SCHEMA {quote(schema)} TO {quote(role)}",
        f"GRANT SELECT ON {tables} TO {quote(role)}",
    ]
