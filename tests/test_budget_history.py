"""`fedaudit node budget-history`: spent budget per requester and period, exactly as charged."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from fedaudit.cli.main import main
from fedaudit.node.domain import Charge, Mechanism
from fedaudit.node.ops.budget_history import budget_history
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.store.db import create_schema, make_engine

Q1 = dt.datetime(2026, 2, 10, tzinfo=dt.UTC)
Q2 = dt.datetime(2026, 5, 10, tzinfo=dt.UTC)
CHARGING_POLICY = example_policy({"board": 2.0, "stats": 1.0, "gone": 1.0}, node_rho_total=10.0)


def _charge(ledger: Ledger, request_id: str, requester: str, rho: float, now: dt.datetime) -> int:
    return ledger.reserve(
        request_id=request_id,
        requester=requester,
        template="assessment_results",
        template_version="1",
        query_hash=request_id.ljust(64, "0"),
        data_version="v1",
        mechanism=Mechanism.DISCRETE_GAUSSIAN,
        charge=Charge(rho=rho),
        now=now,
    )


def test_history_sums_every_period_and_requester(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each (period, requester) shows its exact sum, states and the current caps; --period filters."""
    engine = make_engine(db_url)
    create_schema(engine)
    ledger = Ledger(engine, CHARGING_POLICY)
    ledger.complete(_charge(ledger, "a", "board", 0.5, Q1), "{}")
    ledger.complete(_charge(ledger, "b", "board", 0.03, Q2), "{}")
    ledger.fail(_charge(ledger, "c", "board", 0.25, Q2))
    _charge(ledger, "d", "stats", 0.125, Q2)
    ledger.complete(_charge(ledger, "e", "gone", 0.0625, Q1), "{}")
    ledger.cancel(_charge(ledger, "f", "stats", 0.375, Q2))  # refunded: not in the history
    # The officer's current policy: caps changed, and "gone" was removed.
    policy = example_policy({"board": 0.25, "stats": 1.0}, node_rho_total=5.0)

    history = budget_history(engine, policy)
    all_ = {"cohort": "0000-00"}  # these charges read every cohort
    assert [row.to_json() for row in history.rows] == [
        {"period": "2026-Q1", "requester": "board", "spent_rho": "0.5", "cap_rho": "0.25",
         "remaining_rho": "0", "entries": 1, "released": 1, "failed": 0, "reserved": 0,
         "charged_rho": "0.5", **all_},
        {"period": "2026-Q1", "requester": "gone", "spent_rho": "0.0625", "cap_rho": None,
         "remaining_rho": None, "entries": 1, "released": 1, "failed": 0, "reserved": 0,
         "charged_rho": "0.0625", **all_},
        {"period": "2026-Q2", "requester": "board", "spent_rho": "0.28", "cap_rho": "0.25",
         "remaining_rho": "0", "entries": 2, "released": 1, "failed": 1, "reserved": 0,
         "charged_rho": "0.28", **all_},
        {"period": "2026-Q2", "requester": "stats", "spent_rho": "0.125", "cap_rho": "1",
         "remaining_rho": "0.875", "entries": 1, "released": 0, "failed": 0, "reserved": 1,
         "charged_rho": "0.125", **all_},
    ]  # fmt: skip
    assert history.to_json()["node_spent_rho"] == "0.9675"
    assert history.to_json()["node_remaining_rho"] == "4.0325"
    only_q1 = budget_history(engine, policy, period="2026-Q1")
    assert [(r.period, r.requester) for r in only_q1.rows] == [
        ("2026-Q1", "board"),
        ("2026-Q1", "gone"),
    ]
    assert (
        only_q1.node_spent_units == history.node_spent_units
    )  # the node total is never per period
    engine.dispose()

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "version: 1\nrequesters:\n  board: {rho_per_period: 0.25, templates: all}\n"
        "  stats: {rho_per_period: 1.0, templates: all}\n"
        "budget: {period: quarter, node_rho_total: 5.0, max_rho_per_request: 0.25}\n"
    )
    args = ["node", "budget-history", "--db", db_url, "--policy", str(policy_file)]
    capsys.readouterr()  # drop the log lines printed so far
    assert main([*args, "--period", "2026-Q2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == [row.to_json() for row in history.rows[2:]]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "gone" in table
    assert "(removed)" in table
    assert "spent 0.9675 of 5 rho" in table


def test_history_and_budget_show_spending_per_cohort(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Caps hold per cohort: "spent" is the most charged cohort's sum, "charged" the plain
    sum; `node budget` lists the node's spending per cohort, equal runs merged."""
    from factories import RegistryFactory, record_import

    engine = make_engine(db_url)
    create_schema(engine)
    reg = RegistryFactory()
    q, p = reg.qualification(), reg.provider()
    for day in ("2026-01-10", "2026-02-10", "2026-02-20", "2026-04-01"):
        reg.assessment(reg.candidate(), q, p, day)
    reg.insert(engine)
    record_import(engine, reg, dt.date(2026, 5, 4))
    ledger = Ledger(engine, CHARGING_POLICY)
    for request_id, rho, cohorts in (
        ("jan", 0.5, (("2026-01", "2026-01"),)),
        ("feb", 0.25, (("2026-02", "2026-02"),)),
        ("jan-feb", 0.125, (("2026-01", "2026-02"),)),
    ):
        ledger.reserve(
            request_id=request_id, requester="board", template="assessment_results",
            template_version="1", query_hash=request_id.ljust(64, "0"), data_version="v1",
            mechanism=Mechanism.DISCRETE_GAUSSIAN, charge=Charge(rho=rho), now=Q2,
            cohorts=cohorts,
        )  # fmt: skip
    policy = example_policy({"board": 1.0}, node_rho_total=2.0)
    (row,) = budget_history(engine, policy).rows
    assert (row.to_json()["spent_rho"], row.to_json()["charged_rho"]) == ("0.625", "0.875")
    assert row.cohort == "2026-01"
    assert row.to_json()["remaining_rho"] == "0.375"
    assert budget_history(engine, policy).to_json()["node_spent_rho"] == "0.625"
    from fedaudit.node.ops.budget_history import cohort_spending

    first = policy.cohort_start  # January of the policy's first period year (2019)
    assert [r.to_json() for r in cohort_spending(engine, policy)] == [
        {"first": first, "last": "2025-12", "spent_rho": "0", "persons": 0},
        {"first": "2026-01", "last": "2026-01", "spent_rho": "0.625", "persons": 1},
        {"first": "2026-02", "last": "2026-02", "spent_rho": "0.375", "persons": 2},
        {"first": "2026-03", "last": "2026-05", "spent_rho": "0", "persons": 1},
    ]
    engine.dispose()
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "version: 1\nrequesters:\n  board: {rho_per_period: 1.0, templates: all}\n"
        "budget: {period: quarter, node_rho_total: 2.0, max_rho_per_request: 0.5}\n"
    )
    capsys.readouterr()
    assert main(["node", "budget", "--db", db_url, "--policy", str(policy_file)]) == 0
    out = capsys.readouterr().out
    assert "Node budget per cohort" in out
    assert re.search(r"2026-02\s+│\s+2\s+│\s+0\.375\s+│\s+1\.625", out), out
    assert re.search(r"up to 2025-12\s+│\s+0\s+│\s+0\s+│\s+2\b", out), out


def test_history_of_a_missing_database_is_a_usage_error(tmp_path: Path) -> None:
    """A mistyped SQLite path exits 2 and creates no file."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "version: 1\nrequesters:\n  board: {rho_per_period: 1.0, templates: all}\n"
        "budget: {period: quarter, node_rho_total: 5.0, max_rho_per_request: 0.5}\n"
    )
    missing = tmp_path / "typo.db"
    assert main(["node", "budget-history", "--db", str(missing), "--policy", str(policy_file)]) == 2
    assert not missing.exists()
