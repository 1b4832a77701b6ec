"""report.json schema, validation, report.html rendering and atomic writing."""

from __future__ import annotations

import copy
import json
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from markupsafe import escape

from fedaudit.audit_reports.render import (
    SCHEMA_VERSION,
    ReportError,
    build_charts,
    format_gap_interval,
    format_interval,
    format_value,
    load_schema,
    render_html,
    validate_report,
    write_report,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sample_report.json"


@pytest.fixture(name="report")
def _report() -> dict[str, Any]:
    """A fresh copy of the sample report (5 municipalities, M04 refused)."""
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- schema


def test_schema_is_valid_draft_2020_12() -> None:
    """The committed schema is itself a valid 2020-12 schema and matches SCHEMA_VERSION."""
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_load_schema_returns_a_copy() -> None:
    """Mutating the returned schema does not change what validation uses."""
    load_schema()["properties"].clear()
    assert load_schema()["properties"]


def test_sample_report_validates(report: dict[str, Any]) -> None:
    """The realistic sample report satisfies the schema."""
    validate_report(report)
    assert len(report["metrics"]) >= 40
    assert {n["status"] for n in report["coverage"]["nodes"]} == {"answered", "refused"}


def _drop_findings(r: dict[str, Any]) -> None:
    del r["findings"]


def _bad_severity(r: dict[str, Any]) -> None:
    r["findings"][0]["severity"] = "urgent"


def _ci_of_three(r: dict[str, Any]) -> None:
    r["findings"][0]["ci"] = [0.4, 0.5, 0.6]


def _unknown_top_level(r: dict[str, Any]) -> None:
    r["extra"] = 1


def _unordered_ci(r: dict[str, Any]) -> None:
    r["metrics"][2]["ci"] = [0.9, 0.8]


def _partial_without_reason(r: dict[str, Any]) -> None:
    r["audit"]["status_reason"] = ""


def _refused_without_reason(r: dict[str, Any]) -> None:
    r["coverage"]["nodes"][3]["reason"] = ""


def _share_above_one(r: dict[str, Any]) -> None:
    r["metrics"][0]["estimate"] = 1.2


def _unknown_kind(r: dict[str, Any]) -> None:
    r["findings"][1]["kind"] = "diploma_mill"


def _duplicate_metric_id(r: dict[str, Any]) -> None:
    r["metrics"][1]["id"] = r["metrics"][0]["id"]


def _not_run_with_numbers(r: dict[str, Any]) -> None:
    r["duplicates"]["overall"] = {"estimate": 4, "ci": [1, 7]}


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (_drop_findings, "$", "'findings' is a required property"),
        (_bad_severity, "$.findings[0].severity", "'urgent' is not one of"),
        (_ci_of_three, "$.findings[0].ci", "is too long"),
        (_unknown_top_level, "$", "'extra' was unexpected"),
        (_unordered_ci, "$.metrics[2].ci", "interval low 0.9 exceeds high 0.8"),
        (_partial_without_reason, "$.audit.status_reason", "should be non-empty"),
        (_refused_without_reason, "$.coverage.nodes[3].reason", "should be non-empty"),
        (_share_above_one, "$.metrics[0].estimate", "greater than the maximum of 1"),
        (_unknown_kind, "$.findings[1].kind", "'diploma_mill' is not one of"),
        (_duplicate_metric_id, "$.metrics[1].id", "duplicate id"),
        (_not_run_with_numbers, "$.duplicates.overall", "is not of type 'null'"),
    ],
)
def test_violation_is_reported_with_its_path(
    report: dict[str, Any], mutate: Any, path: str, words: str
) -> None:
    """Each kind of violation is caught and named with its JSON path."""
    mutate(report)
    with pytest.raises(ReportError) as caught:
        validate_report(report)
    assert any(p.startswith(f"{path}: ") and words in p for p in caught.value.problems), (
        caught.value.problems
    )


def test_every_violation_is_listed_at_once(report: dict[str, Any]) -> None:
    """Several problems come back together, not one per attempt."""
    _bad_severity(report)
    _ci_of_three(report)
    _unknown_top_level(report)
    with pytest.raises(ReportError) as caught:
        validate_report(report)
    paths = [p.split(": ")[0] for p in caught.value.problems]
    assert {"$", "$.findings[0].severity", "$.findings[0].ci"} <= set(paths)
    assert len(caught.value.problems) >= 3
    assert str(caught.value).startswith(f"{len(caught.value.problems)} problem(s)")


def test_nan_is_rejected(report: dict[str, Any]) -> None:
    """NaN is not JSON; it must not reach report.json."""
    report["metrics"][0]["estimate"] = float("nan")
    with pytest.raises(ReportError, match="strict JSON"):
        validate_report(report)


def test_tuple_intervals_are_accepted(report: dict[str, Any]) -> None:
    """Producers may build intervals as tuples; they are written as JSON arrays."""
    report["findings"][0]["ci"] = tuple(report["findings"][0]["ci"])
    validate_report(report)


# ----------------------------------------------------------------------------- html


class _TagBalance(HTMLParser):
    """Records tags that close out of order or never close (void elements excepted)."""

    VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "col", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.seen: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def _parse(html: str) -> _TagBalance:
    parser = _TagBalance()
    parser.feed(html)
    parser.close()
    return parser


def test_html_is_well_formed(report: dict[str, Any]) -> None:
    """Every element closes in order and the main landmarks are present."""
    parser = _parse(render_html(report))
    assert parser.errors == []
    assert parser.stack == []
    assert {"html", "head", "title", "body", "header", "main", "section", "footer"} <= parser.seen
    assert {"article", "table", "th", "figure", "nav"} <= parser.seen


def test_html_escapes_a_malicious_summary(report: dict[str, Any]) -> None:
    """A summary carrying markup is shown as text, never executed."""
    report["findings"][0]["summary"] = '<script>alert("x")</script> & <img src=x onerror=1>'
    html = render_html(report)
    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;img" in html


def test_html_shows_every_summary_and_node_status(report: dict[str, Any]) -> None:
    """Each finding's summary and each node's status in words appear in the page."""
    html = render_html(report)
    for finding in report["findings"]:
        assert str(escape(finding["summary"])) in html
    for node in report["coverage"]["nodes"]:
        words = "refused: privacy budget exhausted" if node["node"] == "M04" else "answered"
        assert re.search(
            rf'<th scope="row">{node["node"]}</th>\s*<td data-label="Status">{words}</td>', html
        )


@pytest.mark.parametrize(
    ("status", "reason", "words"),
    [
        ("timed_out", "", "timed out"),
        ("unavailable", "", "unavailable"),
        ("partial", "RATE_LIMITED", "answered in part: too many requests in a short time"),
        ("refused", "REQUESTER_NOT_ALLOWED", "refused: this auditor is not on the"),
    ],
)
def test_node_status_in_words(report: dict[str, Any], status: str, reason: str, words: str) -> None:
    """Every node status and refusal reason reads as plain words."""
    report["coverage"]["nodes"][3].update(status=status, reason=reason)
    html = render_html(report)
    assert re.search(rf'<th scope="row">M04</th>\s*<td data-label="Status">{words}', html)


def test_failed_audit_without_results_renders(report: dict[str, Any]) -> None:
    """A failed run with no metrics still gives a well-formed page that says why."""
    report["audit"].update(status="failed", status_reason="only 1 of 5 municipalities answered")
    report["findings"], report["metrics"] = [], []
    html = render_html(report)
    assert "Audit failed:</strong> only 1 of 5 municipalities answered" in html
    assert 'id="charts"' not in html
    assert "No gap was found" not in html
    assert "No comparison could be made: the audit failed." in html
    assert _parse(html).errors == []


def test_html_has_no_external_references(report: dict[str, Any]) -> None:
    """The page is self-contained: no fetched scripts, styles, fonts or images."""
    html = render_html(report).lower()
    for needle in ('src="http', 'href="http', "@import", "<link", "<script", "url("):
        assert needle not in html, needle


def test_findings_are_ordered_by_severity_then_kind(report: dict[str, Any]) -> None:
    """Critical cards come first, then warnings, then information."""
    report["findings"].reverse()
    html = render_html(report)
    summary, details = html.split('<section id="findings"')
    expected = ["critical", "critical", "warning", "warning", "info"]
    assert re.findall(r'<li class="sev-(\w+)">', summary) == expected
    assert re.findall(r'<span class="badge badge-(\w+)">', details) == expected
    ids = re.findall(r'<span class="fid">(F\d+)</span>', html)
    assert ids == ["F001", "F002", "F003", "F004", "F005"]
    assert re.findall(r'<a href="#(F\d+)">', summary) == ids


def _complete(report: dict[str, Any]) -> None:
    report["audit"].update(status="complete", status_reason="")
    for node in report["coverage"]["nodes"]:
        node.update(status="answered", reason="", message="")


def test_no_findings_says_what_that_means(report: dict[str, Any]) -> None:
    """Without findings a complete audit says none were found and what that does not mean."""
    _complete(report)
    report["findings"] = []
    html = render_html(report)
    assert "No gap was found at 95% confidence." in html
    assert "does <strong>not</strong> mean" in html
    assert '<div class="no-findings">' in html
    assert 'class="finding ' not in html


@pytest.mark.parametrize("status", ["partial", "failed"])
def test_incomplete_audit_never_shows_the_green_no_gap_box(
    report: dict[str, Any], status: str
) -> None:
    """A partial or failed audit without findings never reads as a clean result."""
    report["findings"] = []
    report["audit"].update(status=status, status_reason="M04 refused every query.")
    html = render_html(report)
    assert "No gap was found" not in html
    assert '<div class="no-findings">' not in html  # the green box
    assert 'class="no-findings incomplete' in html
    assert 'class="verdict status-complete"' not in html
    assert f'class="verdict status-{status}"' in html
    if status == "partial":
        assert "M04 did not fully answer" in html
        assert "this is not a clean result" in html


def test_header_shows_plan_date_status_and_confidence(report: dict[str, Any]) -> None:
    """The header carries what the board needs to place the report."""
    html = render_html(report)
    assert "<h1>regional-quality-audit</h1>" in html
    assert "26 November 2026, 09:00 UTC" in html
    assert "Incomplete audit:" in html
    assert "privacy budget at M04 for 2026-Q4 is exhausted" in html
    assert "<dd>95%</dd>" in html


def test_duplicates_not_run_is_explained(report: dict[str, Any]) -> None:
    """A plan without duplicate detection says so and why."""
    html = render_html(report)
    assert (
        "Duplicate detection was not run: duplicate detection is not part of this audit plan."
        in html
    )


def test_duplicates_results_are_tabulated(report: dict[str, Any]) -> None:
    """When duplicate detection ran, overall, per-occupation, histogram and pairs are shown."""
    report["duplicates"] = {
        "status": "complete",
        "reason": "",
        "overall": {"estimate": 41, "ci": [30, 52]},
        "per_occupation": [{"isco_code": "7212", "estimate": 17, "ci": [9, 25]}],
        "overlap_histogram": [{"k": 2, "estimate": 38, "ci": [28, 48]}],
        "pairwise": [{"a": "M01", "b": "M02", "estimate": 12, "ci": [5, 19]}],
    }
    html = render_html(report)
    assert "About <strong>41 (30–52)</strong> persons" in html
    assert (
        '<th scope="row">7212</th><td data-label="Persons">17</td>'
        '<td data-label="Interval">9–25</td>'
    ) in html
    assert (
        '<th scope="row">M01 and M02</th><td data-label="Persons">12</td>'
        '<td data-label="Interval">5–19</td>'
    ) in html
    appendix = html.split('id="appendix-method"')[1]
    assert "Persons certified in exactly k municipalities (raw histogram)" in appendix
    assert _parse(html).errors == []


def test_privacy_section_states_budget_and_error_control(report: dict[str, Any]) -> None:
    """Per-node ρ, ε equivalent, the platform bound and the error-control method are shown."""
    html = render_html(report)
    assert "1.98 at δ = 10⁻⁷" in html
    assert str(escape(report["privacy"]["platform_bound"])) in html
    assert f"across all {report['audit']['error_control']['tests']} comparisons together" in html
    assert "for statisticians (error control: bonferroni).</strong>" in html
    assert "How to read this report" in html


def test_charts_flag_findings_with_marker_and_label(report: dict[str, Any]) -> None:
    """Flagged subjects are drawn as diamonds and tagged with their finding id."""
    html = render_html(report)
    assert html.count('<div class="prow flagged">') == len(report["findings"])  # one row each
    assert "&#9670; F002" in html
    assert html.count('<figure class="chart"') == len([c for c in build_charts(report) if c.main])


def test_build_charts_groups_by_metric_and_level(report: dict[str, Any]) -> None:
    """One chart per metric and subject level, share axes labelled in percent."""
    charts = build_charts(report)
    titles = [c.title for c in charts]
    assert "First-assessment pass rate, by municipality" in titles
    assert "First-assessment pass rate, by training provider" in titles
    assert "First-assessment pass rate, by population group" in titles
    assert "In work 12 months after certification, by training provider" in titles
    employment = charts[titles.index("In work 12 months after certification, by municipality")]
    assert all(t.label.endswith("%") for t in employment.ticks)
    flagged = [r for r in employment.rows if r.flagged]
    assert [(r.label, r.finding_ids) for r in flagged] == [("M02", ("F001",))]
    # Each municipality is compared with the rest of the region: references differ per row.
    assert len({r.ref_x for r in employment.rows}) > 1
    for row in employment.rows:
        assert 0 <= row.low_x <= row.x <= row.high_x <= 100


def test_value_formatting() -> None:
    """Shares read as percentages, gaps as points, money with thousands separators."""
    assert format_value(0.52, "share") == "52%"
    assert format_value(0.885, "share") == "88.5%"
    assert format_interval([0.47, 0.57], "share") == "47–57%"
    assert format_gap_interval([-0.34, -0.22], "share") == "\u221234 to \u221222 points"
    assert format_value(2310, "currency") == "2,310"
    assert format_interval([55, 71], "days") == "55–71 days"


# ----------------------------------------------------------------------------- files


def test_write_report_writes_both_files(report: dict[str, Any], tmp_path: Path) -> None:
    """Both files appear in a newly created directory, and no temp file is left."""
    out = tmp_path / "nested" / "out"
    json_path, html_path = write_report(report, out)
    assert (json_path, html_path) == (out / "report.json", out / "report.html")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    text = json_path.read_text(encoding="utf-8")
    assert json.loads(text) == report
    assert list(json.loads(text)) == list(report)  # key order kept, not sorted
    assert text.startswith('{\n  "schema_version": "1.0",')
    assert "–" in text  # UTF-8, not \u escapes
    assert html_path.read_text(encoding="utf-8") == render_html(report)


def test_write_report_replaces_existing_files(report: dict[str, Any], tmp_path: Path) -> None:
    """A second run overwrites the first run's files in place."""
    write_report(report, tmp_path)
    report["audit"]["run_id"] = "second-run"
    json_path, _ = write_report(report, tmp_path)
    assert json.loads(json_path.read_text(encoding="utf-8"))["audit"]["run_id"] == "second-run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_invalid_report_writes_nothing(report: dict[str, Any], tmp_path: Path) -> None:
    """An invalid report leaves the output directory empty (and uncreated if missing)."""
    bad = copy.deepcopy(report)
    bad["findings"][0]["severity"] = "urgent"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ReportError):
        write_report(bad, out)
    assert list(out.iterdir()) == []
    with pytest.raises(ReportError):
        write_report(bad, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


# ----------------------------------------------------------------------------- for the board


class _Text(HTMLParser):
    """The page's visible text (no style, script or title), and every element id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.ids: set[str] = set()
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(v for k, v in attrs if k == "id" and v)
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _text(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return parser


def _visible(html: str) -> str:
    return " ".join(" ".join(_text(html).parts).split())


def test_figures_are_rounded_to_what_their_interval_supports(report: dict[str, Any]) -> None:
    """No raw float reaches the page: budget figures to three digits, estimates to their CI."""
    node = report["privacy"]["nodes"][0]
    node.update(epsilon_equivalent=10.15344363430337, rho=1.39, requester_rho_remaining=4.6099999)
    report["privacy"]["total_rho"] = 6.949999999999999
    metric = report["metrics"][0]
    metric.update(estimate=0.455446, ci=[0.370867, 0.540024])
    text = _visible(render_html(report))
    assert not re.search(r"\d\.\d{4,}", text), re.search(r".{40}\d\.\d{4,}.{20}", text)
    assert "6.949999" not in text
    assert "10.1534" not in text
    assert "ρ 6.95 across" in text
    assert "10.2 at δ = 10⁻⁷" in text
    assert "46% (37–54%)" in text  # a 17-point-wide interval supports whole percents


def test_counts_are_never_shown_below_zero_but_json_keeps_them(
    report: dict[str, Any], tmp_path: Path
) -> None:
    """Negative DP counts show as 0 on the page (and say so); report.json keeps the raw value."""
    report["duplicates"] = {
        "status": "complete",
        "reason": "",
        "overall": {"estimate": 12, "ci": [-4, 28]},
        "per_occupation": [{"isco_code": "7212", "estimate": -6, "ci": [-25, 13]}],
        "overlap_histogram": [{"k": 3, "estimate": -10, "ci": [-41, 21]}],
        "pairwise": [{"a": "M01", "b": "M04", "estimate": -30, "ci": [-90, 30]}],
    }
    report["metrics"].append(
        {
            "id": "M9001",
            "metric": "revoked_still_recognised",
            "label": "Recognitions resting on a revoked certificate",
            "unit": "count",
            "subject": {"municipality": "M02"},
            "estimate": -46.0,
            "ci": [-106.0, 14.0],
            "denominator": None,
            "reference": None,
            "tested": True,
            "note": "",
        }
    )
    json_path, html_path = write_report(report, tmp_path)
    html = html_path.read_text(encoding="utf-8")
    text = _visible(html)
    duplicates = text.split("Same person certified in several")[1].split("Who answered")[0]
    assert "\u2212" not in duplicates
    assert "About 12 (0–28) persons" in text
    assert "0 (0–14)" in text  # the revoked count, clamped
    assert "noise can push the raw estimate of a small count below zero" in text
    assert "Counts are drawn no lower than zero" in text
    chart = next(c for c in build_charts(report) if c.metric == "revoked_still_recognised")
    assert all(not t.label.startswith("\u2212") for t in chart.ticks)
    assert chart.clamped
    kept = json.loads(json_path.read_text(encoding="utf-8"))
    assert kept["duplicates"]["pairwise"][0]["estimate"] == -30
    assert kept["metrics"][-1]["ci"] == [-106.0, 14.0]
    schema = load_schema()
    assert "kept here unclamped" in schema["$defs"]["duplicates"]["description"]


def test_one_confidence_statement_in_the_body(report: dict[str, Any]) -> None:
    """The body states the audit-wide confidence once; no second level competes with it."""
    html = render_html(report)
    body = html.split('id="appendix-method"')[0]
    text = _visible(body)
    assert "family-wise" not in text
    levels = set(re.findall(r"(\d+(?:\.\d+)?)% confidence", text))
    assert levels == {"95"}
    assert text.count("Confidence 95% for the audit as a whole") == 2  # summary + how to read
    for c in build_charts(report):
        assert "95%" in c.interval_words or "descriptive" in c.interval_words
    # A metric that states its own interval level is drawn with that level in the key.
    for m in report["metrics"]:
        if m["metric"] == "appeal_upheld_rate":
            m["ci_level"] = 0.998649
    key = next(c for c in build_charts(report) if c.metric == "appeal_upheld_rate")
    assert key.interval_words.startswith("its 99.865% interval")


def test_budget_per_node_in_words(report: dict[str, Any]) -> None:
    """Each node's budget reads as spent, cap and what is left; without a cap, spent and left."""
    report["privacy"]["nodes"][0].update(
        rho=1.39, requester_rho_cap=6.0, requester_rho_remaining=4.61
    )
    report["privacy"]["nodes"][1].pop("requester_rho_cap", None)
    validate_report(report)
    text = _visible(render_html(report))
    assert (
        "M01: This audit spent ρ 1.39; this auditor's cap here for 2026-Q4 is ρ 6, of which "
        "ρ 4.61 is left (77%)."
    ) in text
    second = report["privacy"]["nodes"][1]
    left = f"ρ {second['requester_rho_remaining']:g} is left for this auditor for 2026-Q4."
    assert left in text
    refused = next(n for n in report["privacy"]["nodes"] if n["rho"] == 0)
    assert f"{refused['node']}: This audit spent nothing here (a refusal charges nothing)" in text


def test_table_of_contents_and_chart_titles_above_charts(report: dict[str, Any]) -> None:
    """Every contents entry links to a section on the page; each chart's title precedes it."""
    html = render_html(report)
    ids = _text(html).ids
    toc = html.split('<nav class="toc"')[1].split("</nav>")[0]
    targets = re.findall(r'<a href="#([\w-]+)">', toc)
    assert targets[0] == "summary"
    assert "appendix-method" in targets
    assert set(targets) <= ids
    for figure in re.findall(r'<figure class="chart".*?</figure>', html, re.S):
        assert figure.index("<h3") < figure.index('class="plot"')


def test_descriptive_estimates_go_to_the_appendix(report: dict[str, Any]) -> None:
    """Untested-only measures are tables in Appendix A, not charts in the body."""
    html = render_html(report)
    body, appendix = html.split('id="appendix-estimates"')
    charts = build_charts(report)
    earnings = next(c for c in charts if c.metric == "earnings_median_12m")
    assert not earnings.main
    assert earnings.title not in body.split('id="charts"')[1]
    assert f"<summary>{earnings.title}</summary>" in appendix
    assert all(str(escape(c.title)) in body for c in charts if c.main)


def test_each_finding_has_a_next_step_and_labelled_numbers(report: dict[str, Any]) -> None:
    """Summary items carry a suggested next step; the producer's own step wins."""
    report["findings"][1]["next_step"] = "Visit provider P-M03-2 with the M03 office."
    html = _render_unvalidated(report)  # next_step is the producer's optional field
    summary = html.split('<section id="findings"')[0]
    steps = [
        unescape(step)
        for step in re.findall(r"<strong>Suggested next step:</strong> (.*?)</p>", summary)
    ]
    assert len(steps) == len(report["findings"])
    assert "Visit provider P-M03-2 with the M03 office." in steps
    assert any("M02's certification office" in s for s in steps)  # derived for F001
    assert "<dt>Measured: In work 12 months after certification</dt>" in html
    assert "<dt>Compared with</dt>" in html


def test_next_step_is_derived_for_every_kind() -> None:
    """Every finding kind has a suggested step that names whom to contact."""
    from fedaudit.audit_reports.wording import KIND_LABELS, next_step

    for kind in KIND_LABELS:
        subject = {"municipality": "M03", "provider_id": "P1", "other_municipality": "M05"}
        step = next_step({"kind": kind, "subject": subject})
        assert "M03" in step, (kind, step)


@pytest.mark.parametrize(
    "item",
    [
        {"check": "employment", "where": "M02", "reason": "no outcomes recorded at 12 months"},
        {"kind": "appeal_anomaly", "subject": {"municipality": "M04"}, "reason": "no appeals"},
    ],
)
def test_not_assessable_items_are_listed(report: dict[str, Any], item: dict[str, Any]) -> None:
    """Optional not_assessable entries (a newer producer's field) are shown with their reason."""
    report["not_assessable"] = [item]
    text = _visible(_render_unvalidated(report))
    assert "Not assessable" in text
    assert item["reason"] in text
    assert ("(M02)" in text) or ("Unusual appeal outcomes (M04)" in text)
    report.pop("not_assessable")
    assert "Not assessable" not in _visible(render_html(report))


def test_producer_verdict_leads_the_status_line(report: dict[str, Any]) -> None:
    """An optional audit.verdict (the producer's one sentence) is the status line."""
    report["audit"]["verdict"] = "The audit is INCOMPLETE: M04 refused every query."
    html = _render_unvalidated(report)
    assert (
        '<p class="verdict status-partial">The audit is INCOMPLETE: M04 refused every query.</p>'
    ) in html


def _render_unvalidated(report: dict[str, Any]) -> str:
    """Render a report carrying optional fields the schema in this branch does not list yet
    (not_assessable, next_step: the producer side adds them to the schema)."""
    from fedaudit.audit_reports.page import page_context
    from fedaudit.audit_reports.render import environment

    return environment().get_template("report.html.j2").render(**page_context(report))


def test_reconciliation_counts_are_shown_per_municipality(report: dict[str, Any]) -> None:
    """Revocation reconciliation's counts, clamped at zero, and the pairs not checked."""
    release = {"mechanism": "discrete_gaussian", "scale": 2.1, "rho": 0.2, "replayed": False}
    report["reconciliation"] = {
        "status": "partial",
        "per_municipality": {
            "M01": {"estimate": 5, "ci": [1, 9], **release},
            "M02": {"estimate": -2, "ci": [-6, 2], **release},
        },
        "skipped_pairs": [{"recogniser": "M03", "origin": "M04", "reason": "policy opt-out"}],
        "refused": {"M05": "BUDGET_EXHAUSTED: budget exhausted"},
    }
    html = render_html(report)
    assert '<a href="#reconciliation">' in html
    assert (
        '<th scope="row">M02</th><td data-label="Persons">0</td><td data-label="Interval">0–2</td>'
    ) in html
    text = _visible(html)
    assert "M03 against M04: policy opt-out" in text
    assert "refused: M05: BUDGET_EXHAUSTED" in text
    assert "covered only part of the region" in text
    del report["reconciliation"]
    assert 'id="reconciliation"' not in render_html(report)
