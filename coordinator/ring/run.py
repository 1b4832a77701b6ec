"""One duplicates check end to end: relay the ring, take the tally's noisy counts, report.

`run_dedup` is the entry point the audit runner calls. It only orchestrates: the
relay and the tally node's signed noisy counts (`relay`), their checks, intervals and
budget (`release`) and the report parts (`findings`) each live in a module of their own.
It never raises for node failures: a ring that cannot complete becomes a `failed`
duplicates section with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from fedaudit.coordinator.errors import CoordinatorError
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.ring.config import DedupConfig, config_from_plan
from fedaudit.coordinator.ring.findings import report_parts
from fedaudit.coordinator.ring.relay import (
    DedupTransport,
    ProgressCallback,
    RingFailedError,
    RingResult,
    run_ring,
)
from fedaudit.coordinator.ring.release import Releases, privacy_summary, releases_from_tally

log = structlog.get_logger(__name__)


@dataclass
class DedupOutcome:
    """The `duplicates` section, findings and metrics for report.json, and what it cost."""

    duplicates_section: dict[str, Any]
    findings: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    privacy: dict[str, Any]
    tests: int = 0
    releases: Releases | None = field(default=None, repr=False)
    """The noisy counts (the coordinator never holds exact ones: the tally node does)."""
    ring: RingResult | None = field(default=None, repr=False)


def run_dedup(
    plan: AuditPlan,
    transports: Mapping[str, DedupTransport],
    run_id: str,
    *,
    config: DedupConfig | None = None,
    progress: ProgressCallback | None = None,
    per_test_confidence: float | None = None,
) -> DedupOutcome:
    """Run the ring for `plan` and release its DP counts; never raises for node failures.

    `per_test_confidence` lets the caller put these tests into the audit's Bonferroni
    family; by default they form their own family at the plan's confidence.
    """
    config = config or config_from_plan(plan)
    if config is None:
        return DedupOutcome(
            duplicates_section=_empty("not_run", "the plan has no duplicates check"),
            findings=[],
            metrics=[],
            privacy={"rho": 0.0, "epsilon": None, "releases": []},
        )
    params = config.params(plan.mechanism)
    try:
        ring = run_ring(
            transports,
            run_id,
            params,
            deadline_seconds=max(plan.deadline_seconds, 60.0) * 10,
            min_nodes=max(2, config.min_nodes),
            progress=progress,
        )
    except RingFailedError as exc:
        log.warning("dedup.failed", run_id=run_id, reason=exc.reason)
        return DedupOutcome(
            duplicates_section=_empty("failed", exc.reason),
            findings=[],
            metrics=[],
            privacy={"rho": 0.0, "epsilon": None, "releases": []},
        )
    try:
        releases = releases_from_tally(
            plan,
            config,
            params,
            ring.municipalities,
            ring.tally,
            per_test_confidence=per_test_confidence,
        )
    except CoordinatorError as exc:
        log.warning("dedup.tally_refused", run_id=run_id, reason=str(exc))
        return DedupOutcome(
            duplicates_section=_empty("failed", str(exc)),
            findings=[],
            metrics=[],
            privacy={"rho": 0.0, "epsilon": None, "releases": []},
        )
    return _release_all(plan, config, ring, releases)


def _empty(status: str, reason: str) -> dict[str, Any]:
    return {
        "status": status,
        "reason": reason,
        "overall": None,
        "per_occupation": [],
        "overlap_histogram": [],
        "pairwise": [],
    }


def _release_all(
    plan: AuditPlan, config: DedupConfig, ring: RingResult, releases: Releases
) -> DedupOutcome:
    section, findings, metrics = report_parts(
        config, ring.municipalities, ring.tally.occupations, releases, ring.refused
    )
    return DedupOutcome(
        duplicates_section=section,
        findings=findings,
        metrics=metrics,
        privacy=privacy_summary(releases, plan.mechanism, ring.tally.municipality_code),
        tests=releases.tests,
        releases=releases,
        ring=ring,
    )
