"""Plain-language wording of findings and of the audit's error control.

The oversight board reads sentences, not intervals. Every sentence of a finding and
the description of the error control are written here, from numbers the statistics
modules have already computed, so the wording can be reviewed (and changed) in one
place without touching a calculation. The phrases naming a subject ("at provider P
(M01)", "for women in M05") are shared with the metric modules' skip messages.
"""

from __future__ import annotations

from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.statistics.gap_tests import GapTest, Subject


def group_words(dim: str, key: str) -> str:
    """How a group of a disparity or breakdown dimension is named in a sentence."""
    if dim == "subject_type":
        return f"appeals about a {key}"
    if dim == "sex":
        return {"female": "women", "male": "men"}.get(key, f"sex {key}")
    return f"{key} candidates"


def place_words(subject: Subject) -> str:
    """Where a subject is, as a phrase: "in M01", "at provider P (M01)", "for women in M01"."""
    if subject.provider_id is not None:
        return f"at provider {subject.provider_id} ({subject.municipality})"
    if subject.group is not None:
        dim, _, key = subject.group.partition("=")
        return f"for {group_words(dim, key)} in {subject.municipality}"
    return f"in {subject.municipality}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _pts(x: float) -> str:
    return f"{abs(100 * x):.0f} points"


def _range(ci: tuple[float, float]) -> str:
    return f"{100 * ci[0]:.0f}–{100 * ci[1]:.0f}%"


def _side(x: float) -> str:
    return "above" if x > 0 else "below"


def finding_summary(test: GapTest, z: float, severity: str, plan: AuditPlan) -> str:
    """One plain-language sentence for the oversight board."""
    est, ref, gap = test.estimate.value, test.reference.value.value, test.gap
    ci = test.estimate.interval(z)
    tol = f"{100 * test.tolerance:g}-point tolerance"
    beyond = f"twice the {tol}" if severity == "critical" else f"the {tol}"
    conf = f"{100 * plan.confidence:g}% confidence"
    s = test.subject
    if test.kind == "credential_inflation":
        c = test.context
        months = plan.checks.employment.months_after if plan.checks.employment else 12
        low, high = test.gap_interval(z)
        who = "the other providers" if s.provider_id else "the rest of the region"
        place = place_words(s)
        pg, eg = c["pass"] - c["pass_ref"], c["emp"] - c["emp_ref"]
        pg_sd, eg_sd = c.get("pass_gap_sd", 0.0), c.get("emp_gap_sd", 0.0)
        return (
            f"{place[0].upper()}{place[1:]}, the pass rate is {_pct(c['pass'])} against "
            f"{_pct(c['pass_ref'])} for {who} ({_pts(pg)} above, "
            f"{100 * (pg - z * pg_sd):.0f} to {100 * (pg + z * pg_sd):.0f}), while employment "
            f"{months} months after certification is {_pct(c['emp'])} against "
            f"{_pct(c['emp_ref'])} ({_pts(eg)} below, {100 * (eg - z * eg_sd):.0f} to "
            f"{100 * (eg + z * eg_sd):.0f}): more people pass than the job outcomes justify, "
            f"a spread of {_pts(gap)} ({100 * low:.0f} to {100 * high:.0f}), beyond {beyond} "
            f"at {conf}."
        )
    if s.provider_id:
        reference = "the region's other providers"
    elif s.group:
        reference = test.reference.description  # e.g. "national candidates in M05"
    else:
        reference = "the rest of the region"
    tail = (
        f"{_pts(gap)} {_side(gap)} {reference} ({_pct(ref)}); the gap exceeds {beyond} at {conf}."
    )
    if test.kind == "pass_rate_gap":
        return f"The assessment pass rate {place_words(s)} is {_pct(est)} ({_range(ci)}), {tail}"
    if test.kind == "employment_gap":
        months = plan.checks.employment.months_after if plan.checks.employment else 12
        return (
            f"Employment {months} months after certification {place_words(s)} is {_pct(est)} "
            f"({_range(ci)}), {tail}"
        )
    if test.kind == "recognition_delay":
        limit = plan.checks.recognition.limit_days if plan.checks.recognition else 90
        return (
            f"In {s.municipality}, {_pct(est)} ({_range(ci)}) of recognition requests were "
            f"decided after the {limit}-day limit or are overdue, {tail}"
        )
    if test.kind == "appeal_anomaly":
        return (
            f"In {s.municipality}, {_pct(est)} ({_range(ci)}) of decided appeals were upheld, "
            f"{tail}"
        )
    dim, _, key = (s.group or "").partition("=")
    what = "assessment pass rate" if test.metric == "pass_rate" else "employment rate"
    return (
        f"In {s.municipality}, the {what} of {group_words(dim, key)} is {_pct(est)} "
        f"({_range(ci)}), {tail}"
    )


def next_step(test: GapTest, plan: AuditPlan) -> str:
    """What the oversight body could do about a finding: whom to contact, what to check."""
    s = test.subject
    m = s.municipality
    who = f"{m} about provider {s.provider_id}" if s.provider_id else m
    above = test.gap > 0
    if test.kind == "credential_inflation":
        return (
            f"Ask {who} to review recent assessment sessions (marking, assessor independence): "
            "more candidates pass there than find work."
        )
    if test.kind == "pass_rate_gap":
        if above:
            return f"Ask {who} how assessments are set and marked: more pass than elsewhere."
        return (
            f"Ask {who} why more candidates fail than elsewhere: preparation, assessment "
            "difficulty or the candidates admitted."
        )
    if test.kind == "employment_gap":
        return (
            f"Ask {who} in which occupations certificate holders do not find work, and compare "
            "with the regional labour market."
        )
    if test.kind == "recognition_delay":
        limit = plan.checks.recognition.limit_days if plan.checks.recognition else 90
        return (
            f"Ask {m}'s recognition office for its backlog and the requests overdue beyond the "
            f"{limit}-day limit."
        )
    if test.kind == "appeal_anomaly":
        if above:
            return f"Ask {m} for its upheld appeals: first decisions often do not hold."
        return f"Ask {m} how appeals are reviewed: few are upheld compared with the region."
    dim, _, key = (s.group or "").partition("=")
    return (
        f"Ask {m} to examine its assessments and support for {group_words(dim, key)} "
        "(language of the assessment, adjustments, admission)."
    )


def control_sentence(
    plan: AuditPlan,
    m: int,
    per_test: float,
    untested: int,
    *,
    flagged: int = 0,
    method: str = "holm",
) -> str:
    """The error control's description in report.json and the HTML report."""
    conf = f"{100 * plan.confidence:g}%"
    skipped = (
        f" {untested} estimate(s) with fewer than {plan.min_denominator} in a denominator were "
        "reported but not tested."
        if untested
        else ""
    )
    if m == 0:
        return "No test could be performed, so no finding was possible." + skipped
    risk = f"{100 - 100 * plan.confidence:.3g}%"
    if method == "bonferroni":
        return (
            f"Bonferroni correction over all {m} tests of this audit: each test's interval is at "
            f"{100 * per_test:.4g}% confidence, so the chance of even one false finding in the "
            f"whole audit is at most {risk} (confidence {conf}). A finding needs the whole "
            "interval of its gap, DP noise and sampling variability included, beyond the "
            "check's tolerance." + skipped
        )
    return (
        f"Holm's step-down correction over all {m} tests of this audit: the strongest gap is "
        f"tested at {100 * per_test:.4g}% confidence, the next a little less strictly, and so "
        f"on until a test does not flag; the chance of even one false finding in the whole "
        f"audit is at most {risk} (confidence {conf}). A finding needs the whole interval of "
        "its gap, DP noise and sampling variability included, beyond the check's tolerance; "
        "each tested metric shows its interval at the confidence of the step that decided "
        f"it, other metrics at {conf}." + skipped
    )


def split_sentence(confidence: float, quality_tests: int, ring_tests: int) -> str:
    """How the audit's error budget is shared between quality and duplicate-detection tests."""
    return (
        f" The audit's error budget ({100 - 100 * confidence:.3g}%) is split evenly between "
        f"the {quality_tests} quality tests and the {ring_tests} duplicate-detection tests, "
        "each half corrected within itself, so the statement above holds for the audit as a "
        "whole."
    )


__all__ = [
    "control_sentence",
    "finding_summary",
    "group_words",
    "next_step",
    "place_words",
    "split_sentence",
]
