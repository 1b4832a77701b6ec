"""Data bundle validation and import: all problems reported at once, nothing written on any."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from fedaudit.node.errors import BundleError
from fedaudit.node.ingest.bundle import (
    BundleLimits,
    ImportResult,
    import_bundle,
    validate_bundle,
)
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import (
    REGISTRY_TABLES,
    Certificate,
    DataVersion,
    EmploymentOutcome,
    Municipality,
    Qualification,
)

FIXTURE = Path(__file__).parent / "fixtures" / "bundle_small"
NOW = dt.datetime(2026, 1, 15, 9, 30, tzinfo=dt.UTC)
TODAY = NOW.date()
FIXTURE_COUNTS = {
    "municipality": 1,
    "providers": 5,
    "qualifications": 3,
    "candidates": 10,
    "assessments": 11,
    "certificates": 9,
    "recognition_requests": 6,
    "appeals": 5,
    "employment_outcomes": 14,
}


# --- helpers ------------------------------------------------------------------------------


@pytest.fixture(name="bundle")
def _bundle(tmp_path: Path) -> Path:
    """A private, writable copy of the valid fixture bundle."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "bundle"))


@pytest.fixture(name="engine")
def _engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(name="sqlite_engine")
def _sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def _replace(bundle: Path, file: str, old: str, new: str) -> None:
    path = bundle / file
    content = path.read_text(encoding="utf-8")
    assert content.count(old) == 1, f"{old!r} must occur exactly once in {file}"
    path.write_text(content.replace(old, new), encoding="utf-8")


def _rewrite(bundle: Path, file: str, change: Callable[[list[list[str]]], list[list[str]]]) -> None:
    path = bundle / file
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(change(rows))


def _drop_column(name: str) -> Callable[[list[list[str]]], list[list[str]]]:
    def change(rows: list[list[str]]) -> list[list[str]]:
        index = rows[0].index(name)
        return [row[:index] + row[index + 1 :] for row in rows]

    return change


def _problems(bundle: Path, **kwargs: object) -> list[str]:
    with pytest.raises(BundleError) as excinfo:
        validate_bundle(bundle, today=TODAY, **kwargs)  # type: ignore[arg-type]
    return excinfo.value.problems


def _only_problem(bundle: Path) -> str:
    problems = _problems(bundle)
    assert len(problems) == 1, problems
    return problems[0]


def _state(engine: Engine) -> tuple[dict[str, int], list[str]]:
    with engine.connect() as conn:
        counts = {
            model.__tablename__: conn.execute(select(func.count()).select_from(model)).scalar_one()
            for model in REGISTRY_TABLES
        }
        versions = list(
            conn.execute(select(DataVersion.version).order_by(DataVersion.id)).scalars()
        )
    return counts, versions


# --- valid bundles ------------------------------------------------------------------------


def test_fixture_imports_with_row_counts_and_version(engine: Engine) -> None:
    """The hand-written fixture loads completely on both back-ends as data version 1."""
    result = import_bundle(engine, FIXTURE, now=NOW)
    assert isinstance(result, ImportResult)
    assert result.row_counts == FIXTURE_COUNTS
    assert result.data_version == f"v1-{result.digest[:12]}"
    counts, versions = _state(engine)
    assert counts == FIXTURE_COUNTS
    assert versions == [result.data_version]
    with engine.connect() as conn:
        version = conn.execute(select(DataVersion)).one()
        assert version.reference_date == TODAY
        assert version.bundle_digest == result.digest
        assert json.loads(version.row_counts) == FIXTURE_COUNTS


def test_imported_values_have_their_types(engine: Engine) -> None:
    """Codes stay strings, NULLs stay NULL, earnings are rounded half up to whole units."""
    import_bundle(engine, FIXTURE, now=NOW)
    with engine.connect() as conn:
        isco = conn.execute(select(Qualification.isco_code).order_by(Qualification.isco_code))
        assert list(isco.scalars()) == ["3112", "5120", "7411"]
        z08 = conn.execute(select(Certificate).where(Certificate.certificate_id == "Z08")).one()
        assert z08.provider_id is None
        assert z08.origin_municipality == "T02"
        assert z08.issued_on == dt.date(2023, 2, 14)
        query = select(EmploymentOutcome.outcome_id, EmploymentOutcome.monthly_earnings)
        earnings = dict(conn.execute(query).all())
        assert earnings["E02"] == 2616  # 2615.50 rounds up
        assert earnings["E14"] == 2904  # 2904.49 rounds down
        assert earnings["E03"] is None
        in_field = conn.execute(
            select(EmploymentOutcome.in_field).where(EmploymentOutcome.outcome_id == "E04")
        ).scalar_one()
        assert in_field is False


def test_second_import_is_v2_and_replaces_rows(engine: Engine, bundle: Path) -> None:
    """Importing again adds a version and replaces the registry instead of appending to it."""
    first = import_bundle(engine, FIXTURE, now=NOW)
    _rewrite(bundle, "employment_outcomes.csv", lambda rows: rows[:-2])
    second = import_bundle(engine, bundle, now=NOW + dt.timedelta(days=1))
    assert second.data_version.startswith("v2-")
    assert second.digest != first.digest
    counts, versions = _state(engine)
    assert counts == {**FIXTURE_COUNTS, "employment_outcomes": 12}
    assert versions == [first.data_version, second.data_version]


def test_same_bundle_twice_gives_distinct_versions(sqlite_engine: Engine) -> None:
    """Re-importing identical data still records a new version with the same digest."""
    first = import_bundle(sqlite_engine, FIXTURE, now=NOW)
    second = import_bundle(sqlite_engine, FIXTURE, now=NOW)
    assert first.digest == second.digest
    assert (first.data_version[:3], second.data_version[:3]) == ("v1-", "v2-")
    assert _state(sqlite_engine)[0] == FIXTURE_COUNTS


def test_validation_returns_typed_rows_and_a_stable_digest(bundle: Path) -> None:
    """The digest depends on content only; rows come back parsed."""
    parsed = validate_bundle(FIXTURE, today=TODAY)
    assert parsed.municipality_code == "T01"
    assert parsed.row_counts == FIXTURE_COUNTS
    assert validate_bundle(bundle, today=TODAY).digest == parsed.digest
    candidate = parsed.rows["candidates"][0]
    assert candidate["date_of_birth"] == dt.date(1998, 3, 14)
    assert parsed.rows["candidates"][2]["national_id"] is None
    assert parsed.rows["qualifications"][0]["eqf_level"] == 4
    _replace(bundle, "providers.csv", "Gastro Akademie", "Gastro-Akademie")
    assert validate_bundle(bundle, today=TODAY).digest != parsed.digest


def test_bom_crlf_and_column_order_are_accepted(bundle: Path) -> None:
    """A BOM, Windows line endings and any column order read the same as the plain file."""
    expected = validate_bundle(FIXTURE, today=TODAY).rows
    _rewrite(bundle, "assessments.csv", lambda rows: [list(reversed(row)) for row in rows])
    for path in bundle.glob("*.csv"):
        content = path.read_text(encoding="utf-8").replace("\n", "\r\n")
        path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert validate_bundle(bundle, today=TODAY).rows == expected


def test_optional_files_and_columns_may_be_absent(bundle: Path) -> None:
    """Missing optional files load as empty tables, missing optional columns as NULL."""
    (bundle / "appeals.csv").unlink()
    (bundle / "employment_outcomes.csv").unlink()
    _rewrite(bundle, "candidates.csv", _drop_column("national_id"))
    parsed = validate_bundle(bundle, today=TODAY)
    assert parsed.row_counts["appeals"] == 0
    assert parsed.row_counts["employment_outcomes"] == 0
    assert all(row["national_id"] is None for row in parsed.rows["candidates"])


def test_hidden_files_and_readme_are_ignored(bundle: Path) -> None:
    """Editor and OS droppings and a README do not count as unknown files."""
    (bundle / ".DS_Store").write_bytes(b"\x00\x01")
    (bundle / "README.txt").write_text("exported 2025-06-30\n", encoding="utf-8")
    assert validate_bundle(bundle, today=TODAY).row_counts == FIXTURE_COUNTS


def test_blank_lines_are_skipped_but_keep_spreadsheet_numbering(bundle: Path) -> None:
    """Empty rows are ignored, and later problems still name the spreadsheet row."""
    _replace(bundle, "assessments.csv", "A02,C02", "\n,,,,,,\nA02,C02")
    _replace(
        bundle,
        "assessments.csv",
        "A04,C03,Q-COOK,P02,1,2023-03-10,pass",
        "A04,C03,Q-COOK,P02,1,2023-03-10,passed",
    )
    assert _only_problem(bundle).startswith("assessments.csv:7: result: ")


# --- one corruption, one exact problem, nothing written -----------------------------------

# (file, text in the fixture, replacement, exact "file:line: column:" prefix)
CORRUPTIONS = {
    "bad date": (
        "assessments.csv",
        "P02,1,2023-03-10",
        "P02,1,2023-02-30",
        "assessments.csv:5: assessed_on:",
    ),
    "date not ISO": (
        "assessments.csv",
        "P02,1,2023-03-10",
        "P02,1,10.03.2023",
        "assessments.csv:5: assessed_on:",
    ),
    "future date": (
        "assessments.csv",
        "P02,1,2023-03-10",
        "P02,1,2026-03-10",
        "assessments.csv:5: assessed_on:",
    ),
    "bad enum": (
        "assessments.csv",
        "2023-03-10,pass",
        "2023-03-10,Pass",
        "assessments.csv:5: result:",
    ),
    "bad provider type": (
        "providers.csv",
        "GmbH,private",
        "GmbH,privat",
        "providers.csv:3: provider_type:",
    ),
    "attempt 0": (
        "assessments.csv",
        "P02,1,2023-03-10",
        "P02,0,2023-03-10",
        "assessments.csv:5: attempt_no:",
    ),
    "attempt not int": (
        "assessments.csv",
        "P02,1,2023-03-10",
        "P02,1.0,2023-03-10",
        "assessments.csv:5: attempt_no:",
    ),
    "duplicate id": ("assessments.csv", "A05,C04", "A04,C04", "assessments.csv:6: assessment_id:"),
    "duplicate certificate no": (
        "certificates.csv",
        "T01-2022-0102",
        "T01-2022-0101",
        "certificates.csv:3: certificate_no:",
    ),
    "dangling candidate": (
        "assessments.csv",
        "A04,C03",
        "A04,C99",
        "assessments.csv:5: candidate_id:",
    ),
    "dangling provider": (
        "certificates.csv",
        "Q-COOK,P02,training,,,2023",
        "Q-COOK,P09,training,,,2023",
        "certificates.csv:4: provider_id:",
    ),
    "dangling appeal subject": (
        "appeals.csv",
        "assessment,A02",
        "assessment,A99",
        "appeals.csv:2: subject_id:",
    ),
    "appeal subject in wrong table": (
        "appeals.csv",
        "assessment,A02",
        "recognition,A02",
        "appeals.csv:2: subject_id:",
    ),
    "outcome certificate of another candidate": (
        "employment_outcomes.csv",
        "E03,C02,Z02",
        "E03,C02,Z01",
        "employment_outcomes.csv:4: certificate_id:",
    ),
    "reciprocity with provider": (
        "certificates.csv",
        "C05,Q-COOK,,",
        "C05,Q-COOK,P02,",
        "certificates.csv:9: provider_id:",
    ),
    "reciprocity without origin": (
        "certificates.csv",
        "reciprocity,T02,",
        "reciprocity,,",
        "certificates.csv:9: origin_municipality:",
    ),
    "reciprocity without origin no": (
        "certificates.csv",
        "T02,T02-2021-0457",
        "T02,",
        "certificates.csv:9: origin_certificate_no:",
    ),
    "origin without reciprocity": (
        "certificates.csv",
        "C01,Q-ELEC,P01,training,,",
        "C01,Q-ELEC,P01,training,T02,",
        "certificates.csv:2: origin_municipality:",
    ),
    "status change date missing": (
        "certificates.csv",
        "suspended,2024-05-15",
        "suspended,",
        "certificates.csv:4: status_changed_on:",
    ),
    "status change before issue": (
        "certificates.csv",
        "revoked,2025-01-20",
        "revoked,2024-01-20",
        "certificates.csv:7: status_changed_on:",
    ),
    "recognition decided before received": (
        "recognition_requests.csv",
        "2022-11-03,2023-02-10",
        "2022-11-03,2022-10-10",
        "recognition_requests.csv:2: decided_on:",
    ),
    "pending recognition with decision date": (
        "recognition_requests.csv",
        "2025-04-07,,pending",
        "2025-04-07,2025-05-01,pending",
        "recognition_requests.csv:6: decided_on:",
    ),
    "decided recognition without date": (
        "recognition_requests.csv",
        "2024-12-18,rejected",
        ",rejected",
        "recognition_requests.csv:4: decided_on:",
    ),
    "appeal decided before lodged": (
        "appeals.csv",
        "2022-06-29,2022-08-10",
        "2022-06-29,2022-06-10",
        "appeals.csv:2: decided_on:",
    ),
    "months after 9": (
        "employment_outcomes.csv",
        "E01,C01,Z01,6",
        "E01,C01,Z01,9",
        "employment_outcomes.csv:2: months_after:",
    ),
    "bad boolean": (
        "employment_outcomes.csv",
        "employed,true,2480.00",
        "employed,yes,2480.00",
        "employment_outcomes.csv:2: in_field:",
    ),
    "negative earnings": (
        "employment_outcomes.csv",
        "true,2480.00",
        "true,-2480.00",
        "employment_outcomes.csv:2: monthly_earnings:",
    ),
    "decimal comma": (
        "employment_outcomes.csv",
        "true,2480.00",
        'true,"2480,00"',
        "employment_outcomes.csv:2: monthly_earnings:",
    ),
    "isco 3 digits": ("qualifications.csv", ",7411,", ",741,", "qualifications.csv:2: isco_code:"),
    "eqf 9": ("qualifications.csv", "7411,4", "7411,9", "qualifications.csv:2: eqf_level:"),
    "country name": (
        "municipality.csv",
        "Testhausen,AT",
        "Testhausen,Austria",
        "municipality.csv:2: country:",
    ),
    "citizenship lower case": (
        "candidates.csv",
        "female,DE,",
        "female,de,",
        "candidates.csv:4: citizenship:",
    ),
    "required value missing": (
        "candidates.csv",
        "C01,Huber,",
        "C01,,",
        "candidates.csv:2: family_name:",
    ),
    "id with trailing space": (
        "appeals.csv",
        "AP01,C02",
        "AP01 ,C02",
        "appeals.csv:2: appeal_id:",
    ),
    "id too long": (
        "employment_outcomes.csv",
        "E01,C01",
        "E" + "1" * 64 + ",C01",
        "employment_outcomes.csv:2: outcome_id:",
    ),
    "row too short": (
        "assessments.csv",
        "A04,C03,Q-COOK,P02,1,2023-03-10,pass",
        "A04,C03,Q-COOK,P02,1,2023-03-10",
        "assessments.csv:5: -:",
    ),
    "broken quoting": ("providers.csv", "P02,Gastro", 'P02,"Gastro"x', "providers.csv:3: -:"),
}


@pytest.mark.parametrize("case", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_each_corruption_is_reported_and_nothing_written(
    case: tuple[str, str, str, str], bundle: Path, sqlite_engine: Engine
) -> None:
    """Each broken rule yields exactly one problem at the right cell and leaves the data alone."""
    file, old, new, prefix = case
    import_bundle(sqlite_engine, FIXTURE, now=NOW)
    before = _state(sqlite_engine)
    _replace(bundle, file, old, new)
    with pytest.raises(BundleError) as excinfo:
        import_bundle(sqlite_engine, bundle, now=NOW)
    problems = excinfo.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(prefix + " "), problems
    assert _state(sqlite_engine) == before


def test_rejected_import_writes_nothing_on_both_backends(engine: Engine, bundle: Path) -> None:
    """A late problem (a dangling key in the last file) leaves rows and versions untouched."""
    import_bundle(engine, FIXTURE, now=NOW)
    before = _state(engine)
    _replace(bundle, "employment_outcomes.csv", "E14,C10,Z09", "E14,C10,Z99")
    _replace(bundle, "providers.csv", "Gastro Akademie", "Gastro-Akademie")
    with pytest.raises(BundleError) as excinfo:
        import_bundle(engine, bundle, now=NOW)
    assert excinfo.value.problems[0].startswith("employment_outcomes.csv:15: certificate_id: ")
    assert _state(engine) == before


def test_other_municipality_is_refused_unless_explicit(engine: Engine, bundle: Path) -> None:
    """Another town's export does not replace this node's data by mistake."""
    first = import_bundle(engine, FIXTURE, now=NOW)
    before = _state(engine)
    _replace(bundle, "municipality.csv", "T01,Testhausen", "T07,Anderstadt")
    with pytest.raises(BundleError) as excinfo:
        import_bundle(engine, bundle, now=NOW)
    assert excinfo.value.problems[0].startswith("municipality.csv:2: municipality_code: ")
    assert _state(engine) == before
    result = import_bundle(engine, bundle, now=NOW, allow_municipality_change=True)
    assert _state(engine)[1] == [first.data_version, result.data_version]
    with engine.connect() as conn:
        assert list(conn.execute(select(Municipality.municipality_code)).scalars()) == ["T07"]


def test_dangling_key_message_names_target(bundle: Path) -> None:
    """A dangling reference says which value and which file it should be in."""
    _replace(bundle, "assessments.csv", "A04,C03", "A04,C99")
    assert _only_problem(bundle) == (
        "assessments.csv:5: candidate_id: 'C99' matches no candidate_id in candidates.csv"
    )


def test_personal_values_are_not_echoed(bundle: Path) -> None:
    """Problems about names, birth dates and certificate numbers do not repeat the value."""
    _replace(bundle, "candidates.csv", "1998-03-14", "14.03.1998")
    _replace(bundle, "certificates.csv", "T01-2022-0102", "T01-2022-0101")
    problems = _problems(bundle)
    assert [p.split(" ", 2)[:2] for p in problems] == [
        ["candidates.csv:2:", "date_of_birth:"],
        ["certificates.csv:3:", "certificate_no:"],
    ]
    assert "14.03.1998" not in "\n".join(problems)
    assert "T01-2022-0101" not in "\n".join(problems)


# --- file-level problems --------------------------------------------------------------------


def test_missing_required_file(bundle: Path) -> None:
    """A missing required file is one problem, without a cascade of dangling references."""
    (bundle / "providers.csv").unlink()
    assert _only_problem(bundle) == "providers.csv: -: -: required file is missing"


def test_missing_required_column(bundle: Path) -> None:
    """A required column absent from the header is reported once, on the header."""
    _rewrite(bundle, "candidates.csv", _drop_column("sex"))
    assert _only_problem(bundle) == "candidates.csv:1: -: missing required column 'sex'"


def test_missing_key_column_does_not_cascade(bundle: Path) -> None:
    """Without candidate_id nothing can be checked against candidates, so only that is reported."""
    _rewrite(bundle, "candidates.csv", _drop_column("candidate_id"))
    assert _only_problem(bundle) == "candidates.csv:1: -: missing required column 'candidate_id'"


def test_duplicate_header_column(bundle: Path) -> None:
    """A column named twice is ambiguous and refused."""
    _rewrite(bundle, "providers.csv", lambda rows: [[*row, row[1]] for row in rows])
    assert _only_problem(bundle) == "providers.csv:1: name: column appears twice (columns 2 and 5)"


def test_extra_column_is_an_error(bundle: Path) -> None:
    """An unknown column could be a typo that drops data, so it is refused."""
    _rewrite(bundle, "candidates.csv", lambda rows: [[*row, "x"] for row in rows])
    rows_header = (bundle / "candidates.csv").read_text(encoding="utf-8").splitlines()[0]
    assert rows_header.endswith(",x")
    assert _only_problem(bundle).startswith("candidates.csv:1: x: unknown column")


def test_misspelt_column_suggests_the_right_name(bundle: Path) -> None:
    """A typo in a header names the column it probably meant and the one now missing."""
    _replace(bundle, "candidates.csv", ",sex,", ",sexx,")
    assert _problems(bundle) == [
        "candidates.csv:1: sexx: unknown column (did you mean 'sex'?)",
        "candidates.csv:1: -: missing required column 'sex'",
    ]


def test_unknown_file_is_an_error(bundle: Path) -> None:
    """A misspelt file name is reported instead of silently dropping its rows."""
    (bundle / "appeals.csv").rename(bundle / "appeal.csv")
    assert _only_problem(bundle) == (
        "appeal.csv: -: -: unknown file in the bundle (did you mean 'appeals.csv'?)"
    )


def test_non_utf8_file(bundle: Path) -> None:
    """A Latin-1 export is named with the line of the first bad byte, not a traceback."""
    path = bundle / "candidates.csv"
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1", errors="replace"))
    problem = _only_problem(bundle)
    assert problem.startswith("candidates.csv:5: -: not valid UTF-8"), problem


def test_utf16_file(bundle: Path) -> None:
    """A spreadsheet's 'Unicode text' export is recognised and named."""
    path = bundle / "providers.csv"
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
    assert _only_problem(bundle) == "providers.csv:1: -: file is UTF-16 encoded; export it as UTF-8"


def test_nul_byte(bundle: Path) -> None:
    """NUL bytes mean a binary or mis-encoded file and are reported with their line."""
    _replace(bundle, "providers.csv", "P03,Wirtschaftskammer", "P03,Wirtschafts\x00kammer")
    assert _only_problem(bundle).startswith("providers.csv:4: -: contains a NUL byte")


def test_semicolon_separated_file(bundle: Path) -> None:
    """A semicolon export (common with German locales) gets one clear problem."""
    path = bundle / "qualifications.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(",", ";"), encoding="utf-8")
    assert _only_problem(bundle).startswith(
        "qualifications.csv:1: -: header is not comma-separated"
    )


def test_empty_municipality_file(bundle: Path) -> None:
    """A header without a row is not a municipality."""
    _rewrite(bundle, "municipality.csv", lambda rows: rows[:1])
    assert _only_problem(bundle) == (
        "municipality.csv:2: -: expected exactly one data row, found none"
    )


def test_zero_byte_file(bundle: Path) -> None:
    """A zero-byte file lacks even its header."""
    (bundle / "municipality.csv").write_bytes(b"")
    assert _only_problem(bundle) == "municipality.csv:1: -: file is empty; expected a header row"


def test_two_municipality_rows(bundle: Path) -> None:
    """A bundle is one municipality's export."""
    _rewrite(bundle, "municipality.csv", lambda rows: [*rows, ["T02", "Nachbarort", "AT"]])
    assert _only_problem(bundle) == (
        "municipality.csv:3: -: expected exactly one data row, found 2"
    )


def test_missing_directory(tmp_path: Path) -> None:
    """A wrong path is a BundleError, not an OSError."""
    with pytest.raises(BundleError, match="bundle directory does not exist"):
        validate_bundle(tmp_path / "nope", today=TODAY)


# --- absurd input -------------------------------------------------------------------------


def test_oversized_field(bundle: Path) -> None:
    """A field over the size limit is named; one over csv's own limit does not crash."""
    _replace(bundle, "providers.csv", "Gastro Akademie", "G" * 20_000)
    _replace(bundle, "qualifications.csv", "Cook", "C" * 200_000)
    problems = _problems(bundle)
    assert problems[0] == "providers.csv:3: name: value of 20016 characters exceeds 10000"
    assert problems[1].startswith("qualifications.csv:3: -: broken CSV")
    assert len(problems) == 2, problems


def test_oversized_file(bundle: Path) -> None:
    """Files above the byte limit are refused before they are read."""
    size = (bundle / "certificates.csv").stat().st_size  # the largest file
    problems = _problems(bundle, limits=BundleLimits(max_file_bytes=size - 1))
    assert problems == [f"certificates.csv:1: -: file is {size} bytes; at most {size - 1} allowed"]


def test_problem_list_is_capped(bundle: Path) -> None:
    """A completely wrong file lists the first problems and counts the rest."""
    _rewrite(
        bundle,
        "assessments.csv",
        lambda rows: (
            [rows[0]]
            + [[f"X{i}", "C01", "Q-ELEC", "P01", "1", "2024-01-01", "ok"] for i in range(500)]
        ),
    )
    problems = _problems(bundle)
    assert len(problems) == 201
    assert problems[0].startswith("assessments.csv:2: result: ")
    assert problems[199].startswith("assessments.csv:201: result: ")
    assert problems[200] == "bundle: -: -: 302 more problem(s) not listed; fix the above first"


def test_many_problems_reported_at_once(bundle: Path) -> None:
    """Problems in several files come back together, file by file in contract order."""
    (bundle / "stray.csv").write_text("a,b\n", encoding="utf-8")
    _replace(bundle, "providers.csv", "GmbH,private", "GmbH,privat")
    _replace(bundle, "assessments.csv", "P02,1,2023-03-10", "P02,1,2023-02-30")
    _replace(bundle, "assessments.csv", "A05,C04", "A04,C04")
    _replace(bundle, "certificates.csv", "suspended,2024-05-15", "suspended,")
    (bundle / "recognition_requests.csv").unlink()  # leaves appeal AP04 dangling
    _replace(bundle, "employment_outcomes.csv", "true,2480.00", "yes,-1")
    prefixes = [" ".join(p.split(" ")[:2]) for p in _problems(bundle)]
    assert prefixes == [
        "stray.csv: -:",
        "providers.csv:3: provider_type:",
        "assessments.csv:5: assessed_on:",
        "assessments.csv:6: assessment_id:",
        "certificates.csv:4: status_changed_on:",
        "appeals.csv:5: subject_id:",
        "employment_outcomes.csv:2: in_field:",
        "employment_outcomes.csv:2: monthly_earnings:",
    ]


# --- scale --------------------------------------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _large_bundle(root: Path, candidates: int, assessments: int) -> Path:
    bundle = Path(shutil.copytree(FIXTURE, root / "large"))
    rng = random.Random(7)
    quals = ["Q-ELEC", "Q-COOK", "Q-CIVT"]
    providers = ["P01", "P02", "P03", "P04", "P05"]
    _write_csv(
        bundle / "candidates.csv",
        ["candidate_id", "given_name", "family_name", "date_of_birth", "sex"],
        [
            [
                f"C{i:06d}",
                "Anna",
                f"Muster{i}",
                f"19{rng.randint(60, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
                rng.choice(["female", "male"]),
            ]
            for i in range(candidates)
        ],
    )
    _write_csv(
        bundle / "assessments.csv",
        [
            "assessment_id",
            "candidate_id",
            "qualification_id",
            "provider_id",
            "attempt_no",
            "assessed_on",
            "result",
        ],
        [
            [
                f"A{i:07d}",
                f"C{i % candidates:06d}",
                rng.choice(quals),
                rng.choice(providers),
                1 + i // candidates,
                f"202{rng.randint(2, 5)}-0{rng.randint(1, 9)}-2{rng.randint(0, 8)}",
                rng.choice(["pass", "fail", "absent"]),
            ]
            for i in range(assessments)
        ],
    )
    _write_csv(
        bundle / "certificates.csv",
        [
            "certificate_id",
            "certificate_no",
            "candidate_id",
            "qualification_id",
            "provider_id",
            "pathway",
            "issued_on",
            "status",
        ],
        [
            [
                f"Z{i:06d}",
                f"T01-{i:06d}",
                f"C{i:06d}",
                "Q-COOK",
                "P02",
                "training",
                "2024-03-01",
                "valid",
            ]
            for i in range(candidates)
        ],
    )
    _write_csv(
        bundle / "employment_outcomes.csv",
        [
            "outcome_id",
            "candidate_id",
            "certificate_id",
            "months_after",
            "status",
            "in_field",
            "monthly_earnings",
        ],
        [
            [
                f"E{i:06d}",
                f"C{i:06d}",
                f"Z{i:06d}",
                6,
                "employed",
                "true",
                f"{rng.uniform(1500, 4000):.2f}",
            ]
            for i in range(candidates)
        ],
    )
    (bundle / "recognition_requests.csv").unlink()
    (bundle / "appeals.csv").unlink()
    return bundle


def test_large_bundle_imports_quickly(tmp_path: Path, sqlite_engine: Engine) -> None:
    """20k assessments (plus 5k candidates, certificates and outcomes) import whole.

    The time bound is a guard against accidentally quadratic work (it takes about 1 s on
    an idle 2-core machine), set wide enough that a loaded CI machine does not trip it;
    it is not a performance claim.
    """
    bundle = _large_bundle(tmp_path, candidates=5_000, assessments=20_000)
    started = time.perf_counter()
    result = import_bundle(sqlite_engine, bundle, now=NOW)
    elapsed = time.perf_counter() - started
    assert result.row_counts["assessments"] == 20_000
    assert _state(sqlite_engine)[0]["assessments"] == 20_000
    assert elapsed < 20.0, f"import took {elapsed:.2f} s"
