"""`fedaudit node budget-history`: spent budget per requester and period, exactly as charged."""

from __future__ import annotations

import datetime as dt
import json
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
    assert [row.to_json() for row in history.rows] == [
        {"period": "2026-Q1", "requester": "board", "spent_rho": "0.5", "cap_rho": "0.25",
         "remaining_rho": "0", "entries": 1, "released": 1, "failed": 0, "reserved": 0},
        {"period": "2026-Q1", "requester": "gone", "spent_rho": "0.0625", "cap_rho": None,
         "remaining_rho": None, "entries": 1, "released": 1, "failed": 0, "reserved": 0},
        {"period": "2026-Q2", "requester": "board", "spent_rho": "0.28", "cap_rho": "0.25",
         "remaining_rho": "0", "entries": 2, "released": 1, "failed": 1, "reserved": 0},
        {"period": "2026-Q2", "requester": "stats", "spent_rho": "0.125", "cap_rho": "1",
         "remaining_rho": "0.875", "entries": 1, "released": 0, "failed": 0, "reserved": 1},
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
