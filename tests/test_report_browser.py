"""report.html and the archive index in a real headless Chromium: 1400 and 400 px wide.

At both widths the page must not scroll sideways and no visible text may be smaller
than 11 px (after any SVG scaling); screenshots are taken at both widths (kept in
FEDAUDIT_SCREENSHOT_DIR when set, for a person to look at). The measuring is done by
scripts/check_report_layout.py, which lays the page out in an iframe of the exact width
(headless Chromium will not make a window narrower than 500 px). A control page with a
too-wide box and tiny text proves the check can fail.

Chromium comes from the distribution's packages (`apt-get install chromium`, as .ci/run
does). Without it the tests skip with the reason, unless FEDAUDIT_REQUIRE_TOOLS=1 (CI),
where they fail.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import os
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fedaudit.audit_reports.render import write_report
from fedaudit.coordinator.scheduling.archive import Archive

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "sample_report.json"
WIDTHS = (1400, 400)


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_report_layout", ROOT / "scripts" / "check_report_layout.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="checker", scope="module")
def _checker() -> ModuleType:
    """The layout checker, or a skip (a failure under FEDAUDIT_REQUIRE_TOOLS=1)."""
    module = _load_checker()
    try:
        module.chromium()
    except module.ChromiumMissing as exc:
        if os.environ.get("FEDAUDIT_REQUIRE_TOOLS") == "1":
            pytest.fail(f"required here (FEDAUDIT_REQUIRE_TOOLS=1): {exc}")
        pytest.skip(str(exc))
    return module


@pytest.fixture(name="shots")
def _shots(tmp_path: Path) -> Path:
    kept = os.environ.get("FEDAUDIT_SCREENSHOT_DIR")
    directory = Path(kept) if kept else tmp_path / "shots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _busy_report() -> dict[str, Any]:
    """The sample report made harder to lay out: duplicates with negative counts and
    long names, long unbreakable identifiers, a long refusal message."""
    report = json.loads(FIXTURE.read_text(encoding="utf-8"))
    report["duplicates"] = {
        "status": "complete",
        "reason": "",
        "overall": {"estimate": 45, "ci": [32, 58]},
        "per_occupation": [{"isco_code": "7212", "estimate": -6, "ci": [-25, 13]}],
        "overlap_histogram": [{"k": 2, "estimate": 39, "ci": [8, 70]}],
        "pairwise": [{"a": "M01", "b": "M02", "estimate": 162, "ci": [90, 234]}],
    }
    report["metrics"][0]["subject"]["provider_id"] = "PROVIDER-WITH-A-VERY-LONG-IDENTIFIER-0001"
    report["coverage"]["nodes"][3]["message"] = "x" * 120 + " budget exhausted"
    report["audit"]["run_id"] = "regional-quality-audit-2026-11-26T09:00:00Z-with-a-long-suffix"
    return report


def _check(checker: ModuleType, page: Path, shots: Path, name: str) -> None:
    for width in WIDTHS:
        result = checker.measure(page, width)
        assert result["width"] == width, "laid out at the width asked for"
        assert result["text_nodes"] > 50, "the page was measured, not an empty frame"
        assert checker.problems(result) == [], f"{name} at {width} px"
        height = min(int(result["height"]) + 16, 16000)
        shot = checker.screenshot(page, shots / f"{name}-{width}.png", width, height)
        assert _png_size(shot) == (width, height)


@pytest.mark.slow
def test_report_fits_1400_and_400_px(checker: ModuleType, tmp_path: Path, shots: Path) -> None:
    """The report (sample and a harder variant) has no sideways scroll and no text < 11 px."""
    sample = json.loads(FIXTURE.read_text(encoding="utf-8"))
    for name, report in (("report", sample), ("report-busy", _busy_report())):
        _, html = write_report(report, tmp_path / name)
        _check(checker, html, shots, name)


@pytest.mark.slow
def test_archive_index_fits_1400_and_400_px(
    checker: ModuleType, tmp_path: Path, shots: Path
) -> None:
    """The archive index with findings new, persisting and resolved fits both widths."""
    base = _busy_report()
    archive = Archive(tmp_path / "archive")
    keep_per_run = ({0, 1, 2}, {0, 2, 3}, set(), {0, 3, 4}, {0, 1, 4})
    for day, keep in enumerate(keep_per_run, start=1):
        report = copy.deepcopy(base)
        report["audit"]["run_id"] = f"run-{day}"
        report["findings"] = [f for i, f in enumerate(base["findings"]) if i in keep]
        if not keep:
            report["audit"].update(status="failed", status_reason="no node answered in time.")
        archive.store(report, slot=dt.datetime(2027, 1, day, 6, tzinfo=dt.UTC))
    index = archive.rebuild_index()
    html = index.read_text(encoding="utf-8")
    for state in ("new", "persisting", "resolved"):
        assert f'<tr class="state-row-{state}">' in html
    _check(checker, index, shots, "archive-index")


@pytest.mark.slow
def test_the_check_catches_overflow_and_tiny_text(checker: ModuleType, tmp_path: Path) -> None:
    """A page that scrolls sideways at 400 px and has 9 px text is reported as such."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta name='viewport' content='width=device-width'></head>"
        "<body><p>fine text</p><div style='width: 600px'>too wide</div>"
        "<p style='font-size: 9px'>tiny</p>"
        "<svg viewBox='0 0 1000 100' width='100%'><text x='0' y='50' font-size='12'>scaled"
        "</text></svg></body></html>",
        encoding="utf-8",
    )
    result = checker.measure(page, 400)
    assert result["overflow"] >= 190
    small = {item["text"]: item["px"] for item in result["small_text"]}
    assert small["tiny"] == 9
    assert small["scaled"] < 11  # 12 px in a viewBox drawn at about 0.37 scale
    assert len(checker.problems(result)) == 2
    assert checker.problems(checker.measure(page, 1400))[0].startswith("1 text")
