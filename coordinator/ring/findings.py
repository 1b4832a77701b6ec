"""The ring's part of report.json: the `duplicates` section, its metrics and findings.

Turns released (noisy) vectors into report items: every estimate is a metric; a count
the audit's error control flags (`significance`: region-wide counts first, then the
pairs, occupations and municipalities that locate them) is also a finding, naming the
municipalities (and occupation) an oversight body can contact, with a suggested next
step. Each tested count's interval is shown at the level its test was decided at.
Only `Release` values reach this module, never the exact counts, so the report can
hold nothing but DP releases. Estimates are reported raw, negative ones included
(noise can push a small count below zero); displays clamp them, report.json does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedaudit.common.mechanisms import noise_accuracy
from fedaudit.common.ring_releases import ordered_pairs, unordered_pairs
from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.release import Release, Releases
from fedaudit.coordinator.ring.significance import Decision


@dataclass(frozen=True)
class Item:
    """One released count as the report shows it."""

    estimate: float
    ci: tuple[float, float]
    decision: Decision | None

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci": list(self.ci)}


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

    def item(name: str, i: int) -> Item:
        rel: Release = released[name]
        v = float(rel.values[i])
        decision = releases.decisions.get((name, i))
        half = (
            rel.half_width
            if decision is None
            else noise_accuracy(releases.mechanism, rel.scale, decision.level)
        )
        return Item(v, (v - half, v + half), decision)

    status = "partial" if refused else "complete"
    reason = ""
    if refused:
        reason = "counts cover the nodes that joined; " + "; ".join(
            f"{k}: {v}" for k, v in sorted(refused.items())
        )
    dup_overall = item("dup_overall", 0)
    section = {
        "status": status,
        "reason": reason,
        "overall": dup_overall.as_dict(),
        "per_occupation": [
            {"isco_code": o, **item("dup_per_occupation", i).as_dict()} for i, o in enumerate(occs)
        ],
        "overlap_histogram": [
            {"k": k, **item("overlap", i).as_dict()} for i, k in enumerate(range(2, n + 1))
        ],
        "pairwise": [
            {"a": a, "b": b, **item("pairwise", i).as_dict()} for i, (a, b) in enumerate(pairs)
        ],
    }
    builder = FindingsBuilder(1.0 - releases.alpha)
    dup_label = "Persons certified for the same occupation in two or more municipalities"
    builder.add(
        "cross_municipality_duplicates",
        "duplicated_persons",
        dup_label,
        {"municipality": None, "isco_code": None},
        dup_overall,
        severity="warning",
        phrase="persons were certified for the same occupation in two or more municipalities",
        next_step="see the pairwise counts for the municipalities involved; where none is a "
        "finding, ask every municipality to check candidates certified elsewhere",
    )
    for i, (a, b) in enumerate(pairs):
        builder.add(
            "cross_municipality_duplicates",
            "duplicated_persons_pair",
            "Persons certified for the same occupation in both municipalities",
            {"municipality": a, "other_municipality": b, "isco_code": None},
            item("pairwise", i),
            severity="warning",
            phrase=f"persons were certified for the same occupation in both {a} and {b}",
            next_step=f"ask {a} and {b} to compare their registers for candidates certified "
            "in both and check that each certificate was earned where it was issued",
        )
    for i, o in enumerate(occs):
        builder.add(
            "cross_municipality_duplicates",
            "duplicated_persons",
            dup_label,
            {"municipality": None, "isco_code": o},
            item("dup_per_occupation", i),
            severity="warning",
            phrase=f"persons were certified for ISCO {o} in two or more municipalities",
            next_step=f"review the ISCO {o} assessments of the municipalities the pairwise "
            "findings name",
        )
    if config.shopping:
        label = "Persons who passed within 12 months of failing the same occupation elsewhere"
        builder.add(
            "assessment_shopping",
            "assessment_shopping",
            label,
            {"municipality": None},
            item("shopping_overall", 0),
            severity="warning",
            phrase="persons passed an assessment within 12 months of failing it in another "
            "municipality",
            next_step="see the per-municipality counts for where they passed",
        )
        for i, m in enumerate(munis):
            builder.add(
                "assessment_shopping",
                "assessment_shopping",
                label,
                {"municipality": m, "other_municipality": None},
                item("shopping_by_passing", i),
                severity="warning",
                phrase=f"persons passed in {m} within 12 months of failing the same occupation "
                "in another municipality",
                next_step=f"ask {m} to review recent passes of candidates who had failed "
                "elsewhere, and whether its assessment is easier to pass",
            )
    if config.revoked:
        label = "Reciprocity certificates still valid whose origin certificate is revoked"
        builder.add(
            "revoked_still_recognised",
            "revoked_still_recognised",
            label,
            {"municipality": None},
            item("revoked_overall", 0),
            severity="critical",
            phrase="reciprocity certificates are still valid although the origin certificate "
            "is revoked",
            next_step="see the per-pair counts for which municipality must withdraw them",
        )
        for i, (b, a) in enumerate(ordered_pairs(munis)):
            builder.add(
                "revoked_still_recognised",
                "revoked_still_recognised",
                label,
                {"municipality": b, "other_municipality": a},
                item("revoked_by_pair", i),
                severity="critical",
                phrase=f"certificates recognised in {b} are still valid although {a} revoked "
                "the origin certificate",
                next_step=f"ask {b} to run `fedaudit node reconcile` against {a} and withdraw "
                "the recognitions that rest on revoked certificates",
            )
    return section, builder.findings, builder.metrics


class FindingsBuilder:
    """Builds metrics (every released count) and findings (counts the error control flags)."""

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
        value: Item,
        *,
        severity: str,
        phrase: str,
        next_step: str,
    ) -> None:
        decision = value.decision
        tested = decision is not None and decision.tested
        if decision is None:
            note = "DP count from the blinding ring (not tested)"
        elif tested:
            note = (
                "DP count from the blinding ring; tested against zero at "
                f"{_conf(1 - decision.level)} confidence (its step of the audit's error control)"
            )
        else:
            note = (
                "not tested: the region-wide count is not a finding, so the breakdown that "
                "would locate it was not tested"
            )
        low, high = value.ci
        level = None if decision is None else 1.0 - decision.level
        self.metrics.append(
            {
                "id": f"M{9001 + len(self.metrics):04d}",
                "metric": metric,
                "label": label,
                "unit": "count",
                "subject": subject,
                "estimate": value.estimate,
                "ci": [low, high],
                "denominator": None,
                "reference": None,
                "tested": tested,
                **({} if level is None else {"ci_level": level}),
                "note": note,
            }
        )
        if decision is None or not decision.flagged:
            return
        self.findings.append(
            {
                "id": f"F{901 + len(self.findings):03d}",
                "kind": kind,
                "subject": subject,
                "metric": metric,
                "estimate": value.estimate,
                "ci": [low, high],
                "reference": {"description": "zero", "estimate": None, "ci": None},
                "gap": None,
                "gap_ci": None,
                "tolerance": None,
                "severity": severity,
                "summary": (
                    f"About {value.estimate:.0f} {phrase} ({low:.0f} to {high:.0f}), at "
                    f"{100 * self.confidence:g}% confidence."
                ),
                "next_step": next_step[0].upper() + next_step[1:] + ".",
            }
        )


def _conf(c: float) -> str:
    return f"{100 * c:.4g}%"
