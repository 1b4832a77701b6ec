"""Words for the report's codes: finding kinds, subjects, node states and suggested next steps.

Everything here is presentation derived from report.json; nothing is computed from data.
A suggested next step says who to contact and what to check for a finding's kind and
subject; when the producer of the report already gives one (`next_step`), that wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fedaudit.audit_reports.numbers import format_amount, format_probability

KIND_LABELS = {
    "pass_rate_gap": "Pass rate out of line",
    "employment_gap": "Employment below the region",
    "credential_inflation": "Possible credential inflation",
    "recognition_delay": "Slow recognition decisions",
    "outcome_disparity": "Unequal outcomes between groups",
    "appeal_anomaly": "Unusual appeal outcomes",
    "cross_municipality_duplicates": "Same person certified in several municipalities",
    "assessment_shopping": "Failed in one town, passed in another",
    "revoked_still_recognised": "Revoked certificate still recognised",
}
KIND_ORDER = {kind: i for i, kind in enumerate(KIND_LABELS)}
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
COUNT_KINDS = frozenset(
    {"cross_municipality_duplicates", "assessment_shopping", "revoked_still_recognised"}
)

# What a finding's `metric` measures when the metric is not itself in report.metrics.
_DERIVED_METRICS = {
    "pass_employment_spread": "pass rate minus employment rate",
    "duplicated_persons": "persons certified in more than one municipality",
    "assessment_shopping": "persons who failed in one municipality and passed in another",
    "revoked_still_recognised": "recognitions resting on a certificate revoked at its origin",
}

_REFUSAL_WORDS = {
    "REQUESTER_NOT_ALLOWED": "this auditor is not on the municipality's list of allowed requesters",
    "TEMPLATE_NOT_ALLOWED": "the municipality's policy does not allow this kind of question",
    "BUDGET_EXHAUSTED": "privacy budget exhausted",
    "INVALID_PARAMETERS": "the question was malformed",
    "VERSION_MISMATCH": "incompatible software versions",
    "DATA_UNAVAILABLE": "no data loaded",
    "RATE_LIMITED": "too many requests in a short time",
}
_NODE_STATUS_WORDS = {
    "answered": "answered",
    "partial": "answered in part",
    "refused": "refused",
    "timed_out": "timed out",
    "unavailable": "unavailable",
}


def severity_key(finding: Mapping[str, Any]) -> tuple[int, int, str]:
    """Sort key: critical first, then warning, then info; within one, by kind and id."""
    return (
        SEVERITY_ORDER.get(str(finding.get("severity")), 3),
        KIND_ORDER.get(str(finding.get("kind")), len(KIND_ORDER)),
        str(finding.get("id", "")),
    )


def format_timestamp(value: str) -> str:
    """'2026-11-26T09:00:00Z' as '26 November 2026, 09:00 UTC'."""
    moment = datetime.fromisoformat(value)
    return f"{moment.day} {moment:%B %Y, %H:%M} UTC"


def format_group(group: str) -> str:
    """'citizenship_group=foreign' as 'citizenship group: foreign'."""
    dimension, _, value = group.partition("=")
    return f"{dimension.replace('_', ' ')}: {value.replace('_', ' ')}"


def subject_label(subject: Mapping[str, Any] | None) -> str:
    """A subject in words: 'M03, provider P-M03-2', 'M03, citizenship group: foreign'."""
    subject = subject or {}
    municipality = subject.get("municipality")
    parts = [municipality if municipality else "whole region"]
    if subject.get("provider_id"):
        parts.append(f"provider {subject['provider_id']}")
    if subject.get("isco_code"):
        parts.append(f"occupation ISCO {subject['isco_code']}")
    if subject.get("group"):
        parts.append(format_group(subject["group"]))
    if subject.get("other_municipality"):
        parts.append(f"with {subject['other_municipality']}")
    return ", ".join(parts)


def node_status_words(node: Mapping[str, Any]) -> str:
    """'refused: privacy budget exhausted', 'timed out', 'answered'."""
    words = _NODE_STATUS_WORDS.get(node["status"], str(node["status"]).replace("_", " "))
    reason = node.get("reason") or ""
    if reason:
        words = f"{words}: {_REFUSAL_WORDS.get(reason, reason)}"
    return words


def metric_words(metric: str, labels: Mapping[str, str]) -> str:
    """What a finding's number measures, in words, for its 'Measured' label."""
    if metric in labels:
        return labels[metric]
    return _DERIVED_METRICS.get(metric, metric.replace("_", " "))


def _who(subject: Mapping[str, Any]) -> str:
    municipality = subject.get("municipality")
    if not municipality:
        return "the partner municipalities"
    office = f"{municipality}'s certification office"
    if subject.get("provider_id"):
        return f"{office} about provider {subject['provider_id']}"
    return office


def next_step(finding: Mapping[str, Any]) -> str:
    """Who to contact and what to check for this finding (the producer's own step wins)."""
    given = finding.get("next_step")
    if isinstance(given, str) and given.strip():
        return given.strip()
    subject = finding.get("subject") or {}
    kind = finding.get("kind")
    who = _who(subject)
    municipality = subject.get("municipality")
    other = subject.get("other_municipality")
    occupation = f" for ISCO {subject['isco_code']}" if subject.get("isco_code") else ""
    if kind == "pass_rate_gap":
        return (
            f"Contact {who}: review a sample of recent assessment files{occupation} "
            "(marking, examiner independence) against the regional standard."
        )
    if kind == "employment_gap":
        return (
            f"Contact {who}: ask for the follow-up of certificate holders and check that "
            "outcomes are recorded completely and the training matches local jobs."
        )
    if kind == "credential_inflation":
        return (
            f"Contact {who}: review recent assessments for leniency; pass rates above the "
            "region with job outcomes below it are the pattern of credential inflation."
        )
    if kind == "recognition_delay":
        return (
            f"Contact {who}: ask for the list of overdue recognition requests and a plan to "
            "decide them within the statutory limit."
        )
    if kind == "outcome_disparity":
        group = format_group(subject["group"]) if subject.get("group") else "the group concerned"
        return (
            f"Contact {who}: review assessment results for {group} (assessors, language of "
            "the assessment, accommodations offered)."
        )
    if kind == "appeal_anomaly":
        return (
            f"Contact {who}: ask for the appeal decisions and check whether the first "
            "assessments they overturned were sound."
        )
    if kind == "cross_municipality_duplicates":
        if municipality and other:
            return (
                f"Ask {municipality} and {other} to compare their registers{occupation} for "
                "persons certified in both."
            )
        return (
            "Check the pairwise table in the duplicates section for the municipalities "
            "concerned, then ask them to compare their registers."
        )
    if kind == "assessment_shopping":
        where = f"{other} (failed) and {municipality} (passed)" if other else str(municipality)
        return (
            f"Ask {where} to check whether candidates who failed elsewhere were re-assessed "
            "under the same standard."
        )
    if kind == "revoked_still_recognised":
        return (
            f"Ask {municipality or 'each recognising municipality'} to run `fedaudit node "
            "reconcile show` and withdraw recognitions that rest on revoked certificates."
        )
    return f"Contact {who} about this finding."


def budget_sentence(node: Mapping[str, Any]) -> str:
    """A node's privacy budget for this audit in words: spent, cap and what is left."""
    spent = float(node.get("rho") or 0.0)
    cap = node.get("requester_rho_cap")
    left = node.get("requester_rho_remaining")
    period = node.get("budget_period") or ""
    words = (
        f"this audit spent ρ {format_amount(spent)}"
        if spent
        else "this audit spent nothing here (a refusal charges nothing)"
    )
    when = f" for {period}" if period else ""
    if cap:
        words += f"; this auditor's cap here{when} is ρ {format_amount(cap)}"
        if left is not None:
            words += f", of which ρ {format_amount(left)} is left ({round(100 * left / cap)}%)"
    elif left is not None:
        words += f"; ρ {format_amount(left)} is left for this auditor{when}"
    if left is None:
        words += "; what is left was not reported"
    return words[0].upper() + words[1:] + "."


def epsilon_words(node: Mapping[str, Any]) -> str:
    """The (ε, δ) equivalent of a node's charge in words, or '' when nothing was charged."""
    eps = node.get("epsilon_equivalent")
    if eps is None:
        return ""
    delta = format_probability(node.get("equivalence_delta"))
    return f"about ε {format_amount(eps)} at δ = {delta}"


__all__ = [
    "COUNT_KINDS",
    "KIND_LABELS",
    "KIND_ORDER",
    "SEVERITY_ORDER",
    "budget_sentence",
    "epsilon_words",
    "format_group",
    "format_timestamp",
    "metric_words",
    "next_step",
    "node_status_words",
    "severity_key",
    "subject_label",
]
