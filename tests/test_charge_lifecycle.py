"""The charge lifecycle of `NodeService.query` when something breaks, on SQLite and PostgreSQL.

Charge before release has two failure cases, and each is a privacy contract:

- the data cannot be read (here: the registry table is renamed away under the node,
  after it loaded its data state): nothing derived from the data exists, so the charge
  is refunded, nothing is released, the query log says the query failed at no cost,
  and the same request id may be sent again;
- the answer cannot be stored after noise was drawn (here: a database trigger aborts the
  ledger's release update, as a full disk would): noise was drawn on real data, so the
  charge stands, the log records it as a failure with its cost, and a retry of the
  request id is told it "failed after its charge" instead of drawing noise again.

A stored answer is replayed only to the requester who was charged for it: another
requester sending the same request id (a squatter, or a coordinator replaying ids across
requesters) is refused and gets nothing.

All run against the real ledger and query log tables; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from factories import RegistryFactory
from sqlalchemy import Engine, insert, text

from fedaudit.node.domain import Mechanism, QuerySpec
from fedaudit.node.errors import DataUnavailableError
from fedaudit.node.evidence import querylog
from fedaudit.node.privacy.policy import Policy, parse_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.store.db import is_sqlite
from fedaudit.node.store.models import DataVersion

REQUESTER = "auditor"
OTHER = "other-auditor"
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SPEC = QuerySpec("appeal_outcomes", mechanism=Mechanism.DISCRETE_GAUSSIAN, rho=0.125)


def _policy() -> Policy:
    return parse_policy(
        {
            "version": 1,
            "requesters": {REQUESTER: {"rho_per_period": 5.0}, OTHER: {"rho_per_period": 5.0}},
            "budget": {"period": "year", "node_rho_total": 10.0, "max_rho_per_request": 1.0},
            "reliability": {"suppress_below": 0},
            "periods": {"first": 2024, "last": 2024},
        },
        source="<lifecycle policy>",
    )


@pytest.fixture(name="service")
def _service(db_url: str) -> Iterator[NodeService]:
    reg = RegistryFactory()
    for i in range(20):
        person = reg.candidate()
        reg.appeal(person, f"2024-0{1 + i % 9}-10", outcome=("dismissed", "upheld")[i % 2])
    engine = reg.build(db_url)
    with engine.begin() as conn:
        conn.execute(
            insert(DataVersion.__table__),
            {
                "version": "v1",
                "bundle_digest": "lifecycle",
                "imported_at": NOW,
                "reference_date": dt.date(2026, 1, 1),
                "row_counts": "{}",
            },
        )
    service = NodeService(engine, _policy(), clock=lambda: NOW)
    service.capabilities(REQUESTER)  # the data state is loaded before anything breaks
    yield service
    engine.dispose()


def _spent(service: NodeService) -> float:
    return service.ledger.status(REQUESTER, NOW).requester_rho_spent


def _last_log(service: NodeService, request_id: str) -> querylog.LogRow:
    rows = service.query_log.rows(request_id=request_id)
    assert rows, f"no query log row for {request_id}"
    return rows[-1]


def _break_reads(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE appeals RENAME TO appeals_moved"))


def _mend_reads(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE appeals_moved RENAME TO appeals"))


def _break_release(engine: Engine) -> None:
    """Abort any ledger update to state 'released' (what a failing disk would do)."""
    with engine.begin() as conn:
        if is_sqlite(engine):
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_release BEFORE UPDATE ON ledger_entries "
                    "WHEN NEW.state = 'released' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_release() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.state = 'released' THEN RAISE EXCEPTION 'disk full'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_release BEFORE UPDATE ON ledger_entries "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_release()"
                )
            )


def _mend_release(engine: Engine) -> None:
    with engine.begin() as conn:
        if is_sqlite(engine):
            conn.execute(text("DROP TRIGGER refuse_release"))
        else:
            conn.execute(text("DROP TRIGGER refuse_release ON ledger_entries"))


def test_failure_while_reading_refunds_releases_nothing_and_logs_it(service: NodeService) -> None:
    """Engine fails on read: no ledger entry, nothing spent, log 'failed' at 0 cost, id reusable."""
    before = _spent(service)
    _break_reads(service.engine)
    with pytest.raises(DataUnavailableError, match="could not compute"):
        service.query(REQUESTER, "read-fails", SPEC)
    assert service.ledger.find_by_request_id("read-fails") is None
    assert _spent(service) == before
    row = _last_log(service, "read-fails")
    assert (row.method, row.status, row.reason) == ("query", querylog.FAILED, "DATA_UNAVAILABLE")
    assert row.rho_units == 0
    assert row.answer_digest == ""

    _mend_reads(service.engine)
    answer = service.query(REQUESTER, "read-fails", SPEC)  # the refunded id is free again
    assert not answer.replayed
    assert _spent(service) == pytest.approx(before + answer.charge.rho)
    assert _last_log(service, "read-fails").status == querylog.ANSWERED


def test_failure_after_noise_rolls_back_the_charge_and_releases_nothing(
    service: NodeService,
) -> None:
    """Release fails after noise was drawn, before the commit: the charge, the stored answer
    and the log row are one transaction (issue 10), so nothing is charged and nothing left
    the node; the log says failed at no cost. The discarded draw was never observed, so
    it costs no privacy, and a retry is answered with fresh noise and charged once."""
    before = _spent(service)
    _break_release(service.engine)
    with pytest.raises(Exception, match="disk full"):
        service.query(REQUESTER, "release-fails", SPEC)
    assert service.ledger.find_by_request_id("release-fails", requester=REQUESTER) is None
    assert _spent(service) == pytest.approx(before)
    row = _last_log(service, "release-fails")
    assert (row.method, row.status) == ("query", querylog.FAILED)
    assert row.rho_units == 0
    assert row.answer_digest == ""

    _mend_release(service.engine)
    answer = service.query(REQUESTER, "release-fails", SPEC)
    assert not answer.replayed
    entry = service.ledger.find_by_request_id("release-fails", requester=REQUESTER)
    assert entry is not None
    assert entry.state == "released"
    assert _spent(service) == pytest.approx(before + entry.rho)
    assert _last_log(service, "release-fails").status == querylog.ANSWERED
    assert service.query_log.verify().ok


def test_a_request_id_replays_only_to_the_requester_it_charged(service: NodeService) -> None:
    """Request ids belong to their requester: another requester's same id is its own query,
    answered and charged to it, never a replay of someone else's answer."""
    first = service.query(REQUESTER, "shared-id", SPEC)
    other_before = service.ledger.status(OTHER, NOW).requester_rho_spent
    other = service.query(OTHER, "shared-id", SPEC)
    assert not other.replayed
    assert service.ledger.status(OTHER, NOW).requester_rho_spent > other_before
    row = _last_log(service, "shared-id")
    assert (row.requester, row.status) == (OTHER, querylog.ANSWERED)
    again = service.query(REQUESTER, "shared-id", SPEC)
    assert again.replayed
    assert again.cells == first.cells
