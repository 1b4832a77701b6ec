"""The ring's part of report.json: the `duplicates` section, its metrics and findings.

Turns released (noisy) vectors into report items: every estimate is a metric; a tested
one (an overall count) is also a finding where its interval lies above zero, and the
untested breakdowns are there to locate it. Only `Release` values reach this module,
never the exact counts, so the report can hold nothing but DP releases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.release import Release, Releases, ordered_pairs, unordered_pairs


def report_parts(
    config: DedupConfig,
    municipalities: Sequence[str],
    occupations: Sequence[str],
    releases: Releases,
    refused: Mapping[str, str],
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The `duplicates` section, findings and metrics of one completed ring."""
    munis = municipalities
    n = len(munis)
    occs = occupations
    pairs = unordered_pairs(munis)
    released = releases.values

    def ewc(rel: Release, i: int) -> dict[str, Any]:
        v = float(rel.values[i])
        return {"estimate": v, "ci": [v - rel.half_width, v + rel.half_width]}

    dup_overall = ewc(released["dup_overall"], 0)
    status = "partial" if refused else "complete"
    reason = ""
    if refused:
        reason = "counts cover the nodes that joined; " + "; ".join(
            f"{k}: {v}" for k, v in sorted(refused.items())
        )
    section = {
        "status": status,
        "reason": reason,
        "overall": dup_overall,
        "per_occupation": [
            {"isco_code": o, **ewc(released["dup_per_occupation"], i)} for i, o in enumerate(occs)
        ],
        "overlap_histogram": [
            {"k": k, **ewc(released["overlap"], i)} for i, k in enumerate(range(2, n + 1))
        ],
        "pairwise": [
            {"a": a, "b": b, **ewc(released["pairwise"], i)} for i, (a, b) in enumerate(pairs)
        ],
    }
    builder = FindingsBuilder(releases.confidence)
    builder.add(
        "cross_municipality_duplicates",
        "duplicated_persons",
        "Persons certified for the same occupation in two or more municipalities",
        {"municipality": None, "isco_code": None},
        dup_overall,
        severity="warning",
        phrase="persons were certified for the same occupation in two or more municipalities",
    )
    for i, o in enumerate(occs):
        builder.add(
            "cross_municipality_duplicates",
            "duplicated_persons",
            "Persons certified for the same occupation in two or more municipalities",
            {"municipality": None, "isco_code": o},
            ewc(released["dup_per_occupation"], i),
            severity="warning",
            tested=False,
            phrase=f"persons were certified for ISCO {o} in two or more municipalities",
        )
    if config.shopping:
        label = "Persons who passed within 12 months of failing the same occupation elsewhere"
        builder.add(
            "assessment_shopping",
            "assessment_shopping",
            label,
            {"municipality": None},
            ewc(released["shopping_overall"], 0),
            severity="warning",
            phrase="persons passed an assessment within 12 months of failing it in another municipality",
        )
        for i, m in enumerate(munis):
            builder.add(
                "assessment_shopping",
                "assessment_shopping",
                label,
                {"municipality": m, "other_municipality": None},
                ewc(released["shopping_by_passing"], i),
                severity="warning",
                tested=False,
                phrase=f"persons passed in {m} within 12 months of failing the same occupation "
                "in another municipality",
            )
    if config.revoked:
        label = "Reciprocity certificates still valid whose origin certificate is revoked"
        builder.add(
            "revoked_still_recognised",
            "revoked_still_recognised",
            label,
            {"municipality": None},
            ewc(released["revoked_overall"], 0),
            severity="critical",
            phrase="reciprocity certificates are still valid although the origin certificate is revoked",
        )
        for i, (b, a) in enumerate(ordered_pairs(munis)):
            builder.add(
                "revoked_still_recognised",
                "revoked_still_recognised",
                label,
                {"municipality": b, "other_municipality": a},
                ewc(released["revoked_by_pair"], i),
                severity="critical",
                tested=False,
                phrase=f"certificates recognised in {b} are still valid although {a} revoked the "
                "origin certificate",
            )
    return section, builder.findings, builder.metrics


class FindingsBuilder:
    """Builds metrics (every tested estimate) and findings (interval above zero)."""

    def __init__(self, confidence: float) -> None:
        self.confidence = confidence
        self.metrics: list[dict[str, Any]] = []
        self.findings: list[dict[str, Any]] = []

    def add(
        self,
        kind: str,
        metric: str,
        label: str,
        subject: dict[str, Any],
        value: dict[str, Any],
        *,
        severity: str,
        phrase: str,
        tested: bool = True,
    ) -> None:
        self.metrics.append(
            {
                "id": f"M{9001 + len(self.metrics):04d}",
                "metric": metric,
                "label": label,
                "unit": "count",
                "subject": subject,
                "estimate": value["estimate"],
                "ci": value["ci"],
                "denominator": None,
                "reference": None,
                "tested": tested,
                "note": (
                    "DP count from the blinding ring; a finding when its interval excludes zero"
                    if tested
                    else "DP count from the blinding ring (breakdown, not tested)"
                ),
            }
        )
        low, high = value["ci"]
        if not tested or low <= 0:
            return
        self.findings.append(
            {
                "id": f"F{901 + len(self.findings):03d}",
                "kind": kind,
                "subject": subject,
                "metric": metric,
                "estimate": value["estimate"],
                "ci": value["ci"],
                "reference": {"description": "zero", "estimate": None, "ci": None},
                "gap": None,
                "gap_ci": None,
                "tolerance": None,
                "severity": severity,
                "summary": (
                    f"About {value['estimate']:.0f} {phrase} "
                    f"({self.confidence:.1%} interval {low:.0f} to {high:.0f})."
                ),
            }
        )
