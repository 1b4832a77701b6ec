"""Findings over time (audit_reports.history): new, persisting, resolved, not checked."""

from __future__ import annotations

from typing import Any

from fedaudit.audit_reports.history import (
    changes,
    counts,
    run_findings,
    subject_histories,
)


def _report(
    run: str, findings: list[tuple[str, str]], status: str = "complete", down: tuple[str, ...] = ()
) -> dict[str, Any]:
    nodes = ["M01", "M02", "M03"]
    return {
        "audit": {"run_id": run, "status": status},
        "coverage": {
            "nodes": [
                {"node": n, "status": "unavailable" if n in down else "answered"} for n in nodes
            ]
        },
        "findings": [
            {
                "id": f"F{i:03d}",
                "kind": kind,
                "subject": {"municipality": where},
                "severity": "critical" if kind == "recognition_delay" else "warning",
                "summary": f"{kind} in {where}",
            }
            for i, (kind, where) in enumerate(findings, start=1)
        ],
    }


def _states(*reports: dict[str, Any]) -> dict[tuple[str, str], str]:
    runs = [run_findings(r, label=r["audit"]["run_id"]) for r in reports]
    return {(h.kind, h.subject): h.state for h in subject_histories(runs)}


def test_new_persisting_and_resolved() -> None:
    """Flagged now and before: persisting; only now: new; only before (and looked at): resolved."""
    first = _report("r1", [("employment_gap", "M01"), ("recognition_delay", "M02")])
    second = _report("r2", [("employment_gap", "M01"), ("pass_rate_gap", "M03")])
    assert _states(first, second) == {
        ("employment_gap", "M01"): "persisting",
        ("pass_rate_gap", "M03"): "new",
        ("recognition_delay", "M02"): "resolved",
    }


def test_a_subject_the_latest_run_did_not_reach_is_not_resolved() -> None:
    """A finding not raised because its municipality was down is 'not checked', not resolved."""
    first = _report("r1", [("employment_gap", "M01"), ("recognition_delay", "M02")])
    partial = _report("r2", [], status="partial", down=("M02",))
    assert _states(first, partial) == {
        ("employment_gap", "M01"): "resolved",
        ("recognition_delay", "M02"): "not_checked",
    }
    failed = _report("r3", [], status="failed", down=("M01", "M02", "M03"))
    assert set(_states(first, failed).values()) == {"not_checked"}


def test_recurring_finding_is_new_and_keeps_its_history() -> None:
    """Flagged, resolved, flagged again: new in the latest run, with the earlier run counted."""
    a = _report("r1", [("employment_gap", "M01")])
    b = _report("r2", [])
    c = _report("r3", [("employment_gap", "M01")])
    runs = [run_findings(r, label=r["audit"]["run_id"]) for r in (a, b, c)]
    [history] = subject_histories(runs)
    assert (history.state, history.runs_flagged, history.runs) == ("new", 2, 3)
    assert history.trail == (True, False, True)
    assert (history.first_flagged, history.last_flagged) == ("r1", "r3")


def test_persisting_since_the_start_of_the_streak_and_order() -> None:
    """A persisting finding says since when; new come first, then persisting, then resolved."""
    a = _report("r1", [("pass_rate_gap", "M03"), ("recognition_delay", "M02")])
    b = _report("r2", [("employment_gap", "M01"), ("recognition_delay", "M02")])
    c = _report(
        "r3", [("employment_gap", "M01"), ("recognition_delay", "M02"), ("pass_rate_gap", "M02")]
    )
    runs = [run_findings(r, label=r["audit"]["run_id"]) for r in (a, b, c)]
    histories = subject_histories(runs)
    assert [(h.state, h.subject, h.streak_since) for h in histories] == [
        ("new", "M02", ""),
        ("persisting", "M02", "r1"),  # critical before warning within a state
        ("persisting", "M01", "r2"),
        ("resolved", "M03", ""),
    ]
    assert counts(histories) == {"new": 1, "persisting": 2, "resolved": 1, "not_checked": 0}
    assert changes(runs[1], runs[2]) == {"new": 1, "persisting": 2, "resolved": 0}
    assert changes(None, runs[0]) == {"new": 2, "persisting": 0, "resolved": 0}


def test_no_runs_no_history() -> None:
    assert subject_histories([]) == []
