"""One run of a cohort plan: the plan narrowed to what this run still has to ask.

A cohort plan (`cohorts:` in the YAML) is narrowed per run to the checks that have a cohort
to ask (`planning.cohorts.cohorts_to_ask`); a check whose cohort earlier runs answered is
left out, and so is a derived check whose inputs are left out (credential inflation needs
pass rates and employment of the same run). The ring and revocation reconciliation read
every cohort, so they stay only in the runs their cadence (`every_months`) names. What was
left out, and why, goes into the report's `audit.cohorts`, so a reader sees which cohort
each number is about and where the others were answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from fedaudit.coordinator.planning.cohorts import (
    COHORT_CHECKS,
    cohorts_to_ask,
    parse_month,
)
from fedaudit.coordinator.planning.plan import AuditPlan


def protocol_due(every_months: int, run_month: str) -> bool:
    """Whether a check with cadence `every_months` runs in `run_month` (counted from January)."""
    _, month = parse_month(run_month)
    return (month - 1) % max(1, every_months) == 0


def plan_for_run(
    plan: AuditPlan,
    run_month: str,
    answered: Mapping[str, Iterable[str]] | None = None,
    reask: Mapping[str, Iterable[str]] | None = None,
) -> AuditPlan:
    """`plan` as asked in `run_month`: its cohort checks narrowed, its protocols by cadence.

    A plan without a `cohorts` section is returned unchanged (it asks every year, as
    before), except that the ring and reconciliation still follow their cadence.
    """
    checks = plan.checks
    changes: dict[str, Any] = {}
    asked: dict[str, tuple[str, ...]] | None = None
    if plan.cohorts is not None:
        configured = {c: getattr(checks, c) for c in COHORT_CHECKS if getattr(checks, c)}
        asked = cohorts_to_ask(plan.cohorts, configured, run_month, answered, reask)
        for check in configured:
            if check not in asked:
                changes[check] = None
        if "pass_rates" not in asked or "employment" not in asked:
            changes["credential_inflation"] = None
        if "pass_rates" not in asked and "employment" not in asked:
            changes["outcome_disparity"] = None
    for name in ("duplicates", "revocation"):
        spec = getattr(checks, name)
        if spec is not None and not protocol_due(spec.every_months, run_month):
            changes[name] = None
    return dataclasses.replace(
        plan,
        checks=dataclasses.replace(checks, **changes),
        run_month=run_month,
        asked=asked,
    )


def left_out(full: AuditPlan, narrowed: AuditPlan) -> dict[str, str]:
    """Per check of `full` that `narrowed` does not run, the reason in plain words."""
    reasons: dict[str, str] = {}
    for name in full.checks.enabled():
        if getattr(narrowed.checks, name) is not None:
            continue
        spec = getattr(full.checks, name)
        if name in ("duplicates", "revocation"):
            why = spec.cadence_reason or "it charges every cohort at every node"
            reasons[name] = f"runs every {spec.every_months} months ({why})"
        elif name in COHORT_CHECKS:
            reasons[name] = "its due cohort was answered by an earlier run"
        else:
            reasons[name] = "the checks it is derived from ask about other cohorts in this run"
    return reasons


def is_empty(plan: AuditPlan) -> bool:
    """True when a narrowed plan has nothing left to ask (no run is needed)."""
    return not any(
        getattr(plan.checks, c) is not None for c in (*COHORT_CHECKS, "duplicates", "revocation")
    )


def report_section(full: AuditPlan, narrowed: AuditPlan) -> dict[str, Any]:
    """The report's `audit.cohorts`: the run's month, what each check asked, what was left out."""
    return {
        "run_month": narrowed.run_month or "",
        "lag_months": full.cohorts.lag_months if full.cohorts else 0,
        "asked": {check: list(months) for check, months in (narrowed.asked or {}).items()},
        "left_out": left_out(full, narrowed),
    }
