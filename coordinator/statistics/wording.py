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
        return (
            f"{place[0].upper()}{place[1:]}, the pass rate is {_pct(c['pass'])} against "
            f"{_pct(c['pass_ref'])} for {who}, while employment {months} months after "
            f"certification is {_pct(c['emp'])} against {_pct(c['emp_ref'])}: pass rates "
            f"outrun job outcomes by {_pts(gap)} ({100 * low:.0f} to {100 * high:.0f}), "
            f"beyond {beyond} at {conf}."
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


def control_sentence(plan: AuditPlan, m: int, per_test: float, untested: int) -> str:
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
    return (
        f"Bonferroni correction over all {m} tests of this audit: each test's interval is at "
        f"{100 * per_test:.4g}% confidence, so the chance of even one false finding in the "
        f"whole audit is at most {100 - 100 * plan.confidence:.3g}% (family-wise confidence "
        f"{conf}). A finding needs the whole interval of its gap, DP noise and sampling "
        "variability included, beyond the check's tolerance. Tested metrics and their "
        f"references show these adjusted intervals; other metrics show {conf} intervals." + skipped
    )


__all__ = ["control_sentence", "finding_summary", "group_words", "place_words"]
