"""report.json schema, validation, report.html rendering and atomic writing."""

from __future__ import annotations

import copy
import json
import re
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
    assert {"article", "table", "th", "svg"} <= parser.seen


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
        assert re.search(rf'<th scope="row">{node["node"]}</th>\s*<td>{words}</td>', html)


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
    assert re.search(rf'<th scope="row">M04</th>\s*<td>{words}', html)


def test_failed_audit_without_results_renders(report: dict[str, Any]) -> None:
    """A failed run with no metrics still gives a well-formed page that says why."""
    report["audit"].update(status="failed", status_reason="only 1 of 5 municipalities answered")
    report["findings"], report["metrics"] = [], []
    html = render_html(report)
    assert "Audit failed:</strong> only 1 of 5 municipalities answered" in html
    assert 'id="charts"' not in html
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
    badges = re.findall(r'<span class="badge badge-(\w+)">', html)
    assert badges == ["critical", "critical", "warning", "warning", "info"]
    ids = re.findall(r'<span class="fid">(F\d+)</span>', html)
    assert ids == ["F001", "F002", "F003", "F004", "F005"]


def test_no_findings_says_what_that_means(report: dict[str, Any]) -> None:
    """Without findings the page says none were found and what that does not mean."""
    report["findings"] = []
    html = render_html(report)
    assert "No gap was found at 95% confidence." in html
    assert "does <strong>not</strong> mean" in html
    assert "M04 did not fully answer" in html
    assert 'class="finding ' not in html


def test_header_shows_plan_date_status_and_confidence(report: dict[str, Any]) -> None:
    """The header carries what the board needs to place the report."""
    html = render_html(report)
    assert "<h1>regional-quality-audit</h1>" in html
    assert "26 November 2026, 09:00 UTC" in html
    assert "Partial audit:" in html
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
    assert "About <strong>41</strong> persons (interval 30–52)" in html
    assert '<th scope="row">7212</th><td>17</td><td>9–25</td>' in html
    assert '<th scope="row">M01 and M02</th><td>12</td><td>5–19</td>' in html
    assert _parse(html).errors == []


def test_privacy_section_states_budget_and_error_control(report: dict[str, Any]) -> None:
    """Per-node ρ, ε equivalent, the platform bound and the error-control method are shown."""
    html = render_html(report)
    assert "1.98 at δ = 1e-07" in html
    assert str(escape(report["privacy"]["platform_bound"])) in html
    assert f"This audit made {report['audit']['error_control']['tests']} comparisons" in html
    assert "(Bonferroni)" in html
    assert "How to read the intervals" in html


def test_charts_flag_findings_with_marker_and_label(report: dict[str, Any]) -> None:
    """Flagged subjects are drawn as diamonds and tagged with their finding id."""
    html = render_html(report)
    assert html.count('<g class="row flagged">') == len(report["findings"])  # one row each
    assert "&#9670; F002" in html
    assert html.count("<title id=") == len(build_charts(report))


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
    assert employment.shared_reference is None  # each municipality vs the rest of region
    for row in employment.rows:
        assert employment.plot_left <= row.low_x <= row.x <= row.high_x <= employment.plot_right


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
