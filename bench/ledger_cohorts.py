"""Cost of a ledger charge with years of cohort history, against an empty ledger.

    .venv/bin/python bench/ledger_cohorts.py [DATABASE_URL]

Fills a fresh ledger with ten years of monthly runs (3,600 entries over 120 cohorts:
most ask about the newest cohort, every tenth reads all cohorts so far), then times
30 charges over all cohorts and 30 over one cohort, and 30 charges on an empty ledger
in the same run (the baseline: the transaction, locks and insert every charge pays).
Prints the medians and their ratio. Default database: a temporary SQLite file.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog
from sqlalchemy import select

from fedaudit.node.domain import Charge, Mechanism
from fedaudit.node.privacy.cohorts import EARLIEST, CohortRange
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import LedgerCohortRange, LedgerEntry

NOW = dt.datetime(2026, 11, 15, tzinfo=dt.UTC)
MONTHS = [f"{2027 + m // 12}-{m % 12 + 1:02d}" for m in range(120)]
RUNS = 30


def _fill(engine: object) -> None:
    e, r = LedgerEntry.__table__, LedgerCohortRange.__table__
    entries, ranges = [], []
    for i in range(3600):
        month = MONTHS[i // 30]
        entries.append(
            {
                "request_id": f"h{i}",
                "requester": "board",
                "period": "2027-Q1",
                "template": "assessment_results",
                "template_version": "1",
                "query_hash": f"{i:064x}",
                "data_version": "v1",
                "mechanism": "discrete_gaussian",
                "rho_units": 1_000_000,
                "epsilon": None,
                "delta": 0.0,
                "state": "released",
                "answer": None,
                "created_at": NOW,
                "data_key": None,
            }
        )
        ranges.append((f"h{i}", EARLIEST if i % 10 == 0 else month, month))
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(e.insert(), entries)
        ids = dict(conn.execute(select(e.c.request_id, e.c.id)).all())
        conn.execute(
            r.insert(), [{"entry_id": ids[a], "first": b, "last": c} for a, b, c in ranges]
        )


def _median_ms(ledger: Ledger, label: str, cohorts: tuple[CohortRange, ...]) -> float:
    times = []
    for n in range(RUNS):
        started = time.perf_counter()
        ledger.reserve(
            request_id=f"{label}-{n}",
            requester="board",
            template="assessment_results",
            template_version="1",
            query_hash="q" * 64,
            data_version="v1",
            mechanism=Mechanism.DISCRETE_GAUSSIAN,
            charge=Charge(rho=0.001),
            now=NOW,
            cohorts=cohorts,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    policy = example_policy({"board": 10.0}, node_rho_total=10.0, node_shares={"board": 10.0})
    with tempfile.TemporaryDirectory() as tmp:
        urls = sys.argv[1:2] or [f"sqlite:///{Path(tmp) / 'history.db'}"]
        empty_url = urls[0] if sys.argv[1:2] else f"sqlite:///{Path(tmp) / 'empty.db'}"
        empty = make_engine(empty_url)
        create_schema(empty)
        baseline = _median_ms(Ledger(empty, policy), "empty", ((EARLIEST, MONTHS[-1]),))
        empty.dispose()
        engine = make_engine(urls[0])
        create_schema(engine)
        if sys.argv[1:2]:  # one database: clear the baseline's charges first
            with engine.begin() as conn:
                conn.execute(LedgerCohortRange.__table__.delete())
                conn.execute(LedgerEntry.__table__.delete())
        _fill(engine)
        ledger = Ledger(engine, policy)
        all_ms = _median_ms(ledger, "all", ((EARLIEST, MONTHS[-1]),))
        one_ms = _median_ms(ledger, "one", ((MONTHS[-1], MONTHS[-1]),))
        engine.dispose()
    print(f"charge on an empty ledger:          {baseline:6.1f} ms (median of {RUNS})")
    print(
        f"charge over all cohorts, 3,600 entries: {all_ms:6.1f} ms  ratio {all_ms / baseline:.2f}"
    )
    print(
        f"charge to one cohort, 3,600 entries:    {one_ms:6.1f} ms  ratio {one_ms / baseline:.2f}"
    )


if __name__ == "__main__":
    main()
