"""A query's charge and its log row commit together: kill the node process in between.

Regression for attack 5b of issue 10: a failure between the ledger's commit and the
log append left a charge with no matching log row. Each test runs a real
`NodeService` in a child process on the shared database, kills it with SIGKILL at one
point of a query, and checks the database the process left behind: both the charge
and its log row, or neither, and an intact chain.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from fedaudit.node.domain import QuerySpec
from fedaudit.node.evidence.querylog import QueryLog
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import LedgerEntry, QueryLogEntry

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
REQUESTER = "oversight-board"
REQUEST_ID = "crash-1"
SPEC = QuerySpec("certificates_issued", group_by=("isco_code",), rho=0.05)


def _die(*_args: object, **_kwargs: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(db_url: str, point: str) -> None:
    """In a separate process: answer one query and die by SIGKILL at `point`."""
    from fedaudit.node.evidence import querylog
    from fedaudit.node.query import catalogue
    from fedaudit.node.query.service import NodeService

    engine = make_engine(db_url)
    service = NodeService(engine, example_policy({REQUESTER: 1.0}))
    if point == "after the charge, before the data are read":
        catalogue.true_counts = _die  # type: ignore[assignment]
    elif point == "after the answer is stored, before the log append":
        original = querylog.QueryLog.append

        def append(self, event, outer=None):  # type: ignore[no-untyped-def]
            if event.method == "query":
                _die()
            return original(self, event, outer)

        querylog.QueryLog.append = append  # type: ignore[method-assign]
    service.query(REQUESTER, REQUEST_ID, SPEC)
    if point == "after the answer is returned":
        _die()
    os._exit(3)  # not reached for the points above


def _state(engine: Engine) -> tuple[int, int, int]:
    """(ledger entries, rho units charged, query log rows) for the crashing request."""
    with engine.connect() as conn:
        entries, units = conn.execute(
            select(func.count(), func.coalesce(func.sum(LedgerEntry.rho_units), 0)).where(
                LedgerEntry.request_id == REQUEST_ID
            )
        ).one()
        rows = conn.execute(
            select(func.count()).where(
                QueryLogEntry.request_id == REQUEST_ID, QueryLogEntry.method == "query"
            )
        ).scalar_one()
    return int(entries), int(units), int(rows)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "committed"),
    [
        ("after the charge, before the data are read", False),
        ("after the answer is stored, before the log append", False),
        ("after the answer is returned", True),
    ],
)
def test_a_killed_node_leaves_charge_and_log_row_together(db_url: str, point, committed) -> None:
    engine = make_engine(db_url)
    try:
        import_bundle(engine, FIXTURE_BUNDLE)
        process = multiprocessing.get_context("spawn").Process(target=_child, args=(db_url, point))
        process.start()
        process.join(timeout=120)
        assert process.exitcode == -signal.SIGKILL, f"the child did not die at: {point}"
        entries, units, rows = _state(engine)
        if committed:
            assert (entries, rows) == (1, 1)
            assert units == 50_000_000_000
        else:
            assert (entries, units, rows) == (0, 0, 0), f"killed {point}"
        verification = QueryLog(engine).verify()
        assert verification.ok, verification.problem
    finally:
        engine.dispose()
