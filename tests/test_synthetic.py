"""The synthetic federation: valid bundles, deterministic, with the planted anomalies visible."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import statistics
import time
import unicodedata
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedaudit.synthetic.federation import SyntheticFederation, generate_federation

TODAY = dt.date(2026, 3, 1)
CUTOFF = TODAY - dt.timedelta(days=30)
EMPLOYED = ("employed", "self_employed")
DATE_COLUMNS = {
    "assessments.csv": ("assessed_on",),
    "certificates.csv": ("issued_on", "status_changed_on"),
    "recognition_requests.csv": ("received_on", "decided_on"),
    "appeals.csv": ("lodged_on", "decided_on"),
}
# The contract's columns, in its order (data-contract.md), optional columns included.
HEADERS = {
    "municipality.csv": "municipality_code name country",
    "providers.csv": "provider_id name provider_type accreditation_status",
    "qualifications.csv": "qualification_id title isco_code eqf_level",
    "candidates.csv": "candidate_id national_id given_name family_name date_of_birth sex "
    "citizenship",
    "assessments.csv": "assessment_id candidate_id qualification_id provider_id attempt_no "
    "assessed_on result",
    "certificates.csv": "certificate_id certificate_no candidate_id qualification_id "
    "provider_id pathway origin_municipality origin_certificate_no issued_on status "
    "status_changed_on",
    "recognition_requests.csv": "request_id candidate_id qualification_id origin_municipality "
    "received_on decided_on decision",
    "appeals.csv": "appeal_id candidate_id subject_type subject_id lodged_on decided_on outcome",
    "employment_outcomes.csv": "outcome_id candidate_id certificate_id months_after status "
    "in_field monthly_earnings",
}


@dataclass(frozen=True)
class Generated:
    federation: SyntheticFederation
    seconds: float


@pytest.fixture(scope="module", name="generated")
def _generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """The default-size federation, generated once for the module (and timed)."""
    start = time.perf_counter()
    federation = generate_federation(tmp_path_factory.mktemp("federation"), today=TODAY)
    return Generated(federation, time.perf_counter() - start)


@pytest.fixture(name="fed")
def _fed(generated: Generated) -> SyntheticFederation:
    return generated.federation


def read(bundle: Path, name: str) -> list[dict[str, str]]:
    with (bundle / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def bundle_of(fed: SyntheticFederation, code: str) -> Path:
    return fed.bundles[fed.municipalities.index(code)]


def share(rows: list[dict[str, str]], hit: Callable[[dict[str, str]], bool]) -> float:
    assert rows, "no rows to take a share of"
    return sum(1 for r in rows if hit(r)) / len(rows)


def first_attempt_pass(bundle: Path, keep: Callable[[dict[str, str]], bool] = bool) -> float:
    rows = [a for a in read(bundle, "assessments.csv") if a["attempt_no"] == "1" and keep(a)]
    return share(rows, lambda a: a["result"] == "pass")


def employment(bundle: Path, months: int, certificates: set[str] | None = None) -> float:
    rows = [
        o
        for o in read(bundle, "employment_outcomes.csv")
        if o["months_after"] == str(months)
        and (certificates is None or o["certificate_id"] in certificates)
    ]
    return share(rows, lambda o: o["status"] in EMPLOYED)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    """The same seed writes byte-identical files; another seed writes different ones."""

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.csv"))}

    kwargs = {"candidates_per_municipality": 400, "today": TODAY}
    generate_federation(tmp_path / "a", seed=11, **kwargs)
    generate_federation(tmp_path / "b", seed=11, **kwargs)
    generate_federation(tmp_path / "c", seed=12, **kwargs)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert len(files(tmp_path / "a")) == 5 * 9
    assert files(tmp_path / "a") != files(tmp_path / "c")


def test_default_size_generates_quickly(generated: Generated) -> None:
    """Five municipalities of 3000 candidates generate well inside the ceiling (target < 5 s)."""
    assert generated.seconds < 30, f"generation took {generated.seconds:.1f} s"


def test_bundles_pass_the_validator(fed: SyntheticFederation) -> None:
    """Every bundle has the contract's exact headers and passes validate_bundle."""
    for bundle in fed.bundles:
        for name, header in HEADERS.items():
            with (bundle / name).open(encoding="utf-8", newline="") as f:
                assert next(csv.reader(f)) == header.split(), f"{bundle.name}/{name}"
    if importlib.util.find_spec("fedaudit.node.ingest.bundle") is None:
        pytest.skip("fedaudit.node.ingest.bundle (the validator) does not exist yet")
    from fedaudit.node.ingest.bundle import validate_bundle

    for bundle in fed.bundles:
        parsed = validate_bundle(bundle, today=TODAY)
        assert parsed.municipality_code == bundle.name
        assert parsed.row_counts["candidates"] == 3000


def test_no_date_after_the_cutoff(fed: SyntheticFederation) -> None:
    """Events lie in 2021-01-01 .. today-30 days and dates of birth in 1975..2006."""
    for bundle in fed.bundles:
        for name, columns in DATE_COLUMNS.items():
            for row in read(bundle, name):
                for col in columns:
                    if row[col]:
                        assert dt.date(2021, 1, 1) <= dt.date.fromisoformat(row[col]) <= CUTOFF
        for row in read(bundle, "candidates.csv"):
            assert 1975 <= dt.date.fromisoformat(row["date_of_birth"]).year <= 2006


def test_reference_data_is_shared(fed: SyntheticFederation) -> None:
    """Qualifications are identical everywhere; provider ids are unique across the federation."""
    quals = [read(b, "qualifications.csv") for b in fed.bundles]
    assert all(q == quals[0] for q in quals)
    assert len(quals[0]) == 12
    providers = [p["provider_id"] for b in fed.bundles for p in read(b, "providers.csv")]
    assert len(providers) == len(set(providers))
    assert all(4 <= len(read(b, "providers.csv")) <= 6 for b in fed.bundles)
    assert fed.clean_municipalities == ("M01",)


def test_clean_municipality_has_baseline_rates(fed: SyntheticFederation) -> None:
    """M01 shows the baseline: pass 0.88, employment 0.72 / 0.80, 10 % decisions beyond 90 days."""
    m01 = bundle_of(fed, "M01")
    assert first_attempt_pass(m01) == pytest.approx(0.88, abs=0.04)
    assert employment(m01, 6) == pytest.approx(0.72, abs=0.04)
    assert employment(m01, 12) == pytest.approx(0.80, abs=0.04)
    candidates = read(m01, "candidates.csv")
    assert share(candidates, lambda c: c["citizenship"] not in ("AT", "")) == pytest.approx(
        0.13, abs=0.03
    )
    assert share(candidates, lambda c: c["national_id"] != "") == pytest.approx(0.90, abs=0.03)
    requests = read(m01, "recognition_requests.csv")
    assert len(requests) / len(candidates) == pytest.approx(0.05, abs=0.01)


def test_low_employment_is_visible_in_m02(fed: SyntheticFederation) -> None:
    """M02's employment is 0.52 at 12 and 0.45 at 6 months."""
    m02 = bundle_of(fed, "M02")
    assert employment(m02, 12) == pytest.approx(0.52, abs=0.05)
    assert employment(m02, 6) == pytest.approx(0.45, abs=0.05)
    assert first_attempt_pass(m02) == pytest.approx(0.88, abs=0.04)


def test_diploma_mill_is_visible_in_m03(fed: SyntheticFederation) -> None:
    """M03-P4 trains a quarter of M03, passes nearly everyone and places few in work."""
    m03 = bundle_of(fed, "M03")
    firsts = [a for a in read(m03, "assessments.csv") if a["attempt_no"] == "1"]
    assert share(firsts, lambda a: a["provider_id"] == "M03-P4") == pytest.approx(0.25, abs=0.05)
    assert first_attempt_pass(m03, lambda a: a["provider_id"] == "M03-P4") >= 0.97
    assert first_attempt_pass(m03, lambda a: a["provider_id"] != "M03-P4") == pytest.approx(
        0.88, abs=0.04
    )
    mill = {
        c["certificate_id"] for c in read(m03, "certificates.csv") if c["provider_id"] == "M03-P4"
    }
    assert employment(m03, 12, mill) == pytest.approx(0.45, abs=0.06)
    outcomes = [
        o
        for o in read(m03, "employment_outcomes.csv")
        if o["certificate_id"] in mill and o["status"] in EMPLOYED
    ]
    assert share(outcomes, lambda o: o["in_field"] == "true") == pytest.approx(0.30, abs=0.07)


def test_slow_recognition_is_visible_in_m04(fed: SyntheticFederation) -> None:
    """M04 decides later (median ~150 days, ~65 % beyond 90) and gets more requests."""

    def days(bundle: Path) -> list[int]:
        return [
            (dt.date.fromisoformat(r["decided_on"]) - dt.date.fromisoformat(r["received_on"])).days
            for r in read(bundle, "recognition_requests.csv")
            if r["decided_on"]
        ]

    m04 = days(bundle_of(fed, "M04"))
    assert 120 <= statistics.median(m04) <= 180
    assert sum(d > 90 for d in m04) / len(m04) == pytest.approx(0.65, abs=0.10)
    assert len(read(bundle_of(fed, "M04"), "recognition_requests.csv")) / 3000 == pytest.approx(
        0.12, abs=0.02
    )
    m01 = days(bundle_of(fed, "M01"))
    assert 45 <= statistics.median(m01) <= 75
    assert sum(d > 90 for d in m01) / len(m01) <= 0.2


def test_citizenship_disparity_is_visible_in_m05(fed: SyntheticFederation) -> None:
    """In M05 a quarter are foreign citizens, passing at 0.60 against 0.88 for nationals."""
    m05 = bundle_of(fed, "M05")
    citizenship = {c["candidate_id"]: c["citizenship"] for c in read(m05, "candidates.csv")}
    foreign = sum(1 for c in citizenship.values() if c not in ("AT", "")) / len(citizenship)
    assert foreign == pytest.approx(0.25, abs=0.04)
    is_foreign = lambda a: citizenship[a["candidate_id"]] not in ("AT", "")  # noqa: E731
    assert first_attempt_pass(m05, is_foreign) == pytest.approx(0.60, abs=0.05)
    national = first_attempt_pass(m05, lambda a: citizenship[a["candidate_id"]] == "AT")
    assert national == pytest.approx(0.88, abs=0.04)


def test_sex_gap_in_employment_is_small(fed: SyntheticFederation) -> None:
    """Men are employed about 2 points more often than women: a background gap, not a finding."""
    rates: dict[str, list[bool]] = defaultdict(list)
    for code in ("M01", "M04", "M05"):
        bundle = bundle_of(fed, code)
        sex = {c["candidate_id"]: c["sex"] for c in read(bundle, "candidates.csv")}
        for o in read(bundle, "employment_outcomes.csv"):
            if o["months_after"] == "12":
                rates[sex[o["candidate_id"]]].append(o["status"] in EMPLOYED)
    gap = statistics.mean(rates["male"]) - statistics.mean(rates["female"])
    assert -0.02 <= gap <= 0.06


# --- persons across bundles ------------------------------------------------------------------


def _norm(name: str) -> str:
    special = str.maketrans({"ł": "l", "đ": "d", "ı": "i", "ß": "ss"})
    text = unicodedata.normalize("NFKD", name.casefold().translate(special))
    return "".join(ch for ch in text if ch.isalpha())


def cross_pairs(fed: SyntheticFederation) -> list[tuple[str, str, str, str]]:
    """(municipality, candidate, municipality, candidate) for every person in two bundles."""
    holders: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)
    for bundle in fed.bundles:
        for c in read(bundle, "candidates.csv"):
            who = (bundle.name, c["candidate_id"])
            names = sorted((_norm(c["given_name"]), _norm(c["family_name"])))
            holders[("name", *names, c["date_of_birth"])].add(who)
            if c["national_id"]:
                holders[("id", c["national_id"])].add(who)
    pairs = set()
    for group in holders.values():
        for a in group:
            for b in group:
                if a[0] < b[0]:
                    pairs.add((*a, *b))
    return sorted(pairs)


def planted(fed: SyntheticFederation, kind: str) -> int:
    return sum(1 for p in fed.planted if p.kind == kind)


def test_duplicate_persons_are_in_two_bundles(fed: SyntheticFederation) -> None:
    """Exactly the planted persons hold two non-reciprocity certificates for one qualification."""
    certified: dict[tuple[str, str], set[str]] = defaultdict(set)
    for b in fed.bundles:
        for c in read(b, "certificates.csv"):
            if c["pathway"] != "reciprocity":
                certified[(b.name, c["candidate_id"])].add(c["qualification_id"])
    duplicates = [p for p in cross_pairs(fed) if certified[p[:2]] & certified[p[2:]]]
    assert planted(fed, "cross_municipality_duplicates") == 40
    assert len(duplicates) == 40
    names = {
        (b.name, c["candidate_id"]): (c["given_name"], c["family_name"])
        for b in fed.bundles
        for c in read(b, "candidates.csv")
    }
    variants = [p for p in duplicates if names[p[:2]] != names[p[2:]]]
    assert 3 <= len(variants) <= 10


def test_assessment_shoppers_fail_in_one_and_pass_in_another(fed: SyntheticFederation) -> None:
    """Exactly the planted shoppers fail in one bundle and pass elsewhere within a year."""
    results: dict[tuple[str, str], list[tuple[str, str, dt.date]]] = defaultdict(list)
    for b in fed.bundles:
        for a in read(b, "assessments.csv"):
            results[(b.name, a["candidate_id"])].append(
                (a["qualification_id"], a["result"], dt.date.fromisoformat(a["assessed_on"]))
            )

    def shopped(failed: tuple[str, str], passed: tuple[str, str]) -> bool:
        passes = {q for q, r, _ in results[failed] if r == "pass"}
        return any(
            qf == qp and rp == "pass" and dt.timedelta(0) < dp - df <= dt.timedelta(days=365)
            for qf, rf, df in results[failed]
            if rf == "fail" and qf not in passes
            for qp, rp, dp in results[passed]
        )

    shoppers = [p for p in cross_pairs(fed) if shopped(p[:2], p[2:]) or shopped(p[2:], p[:2])]
    assert planted(fed, "assessment_shopping") == 15
    assert len(shoppers) == 15


def test_reciprocity_origins_resolve_and_planted_ones_are_revoked(
    fed: SyntheticFederation,
) -> None:
    """Reciprocity certificates name real origins; exactly the planted ones are revoked there."""
    by_no = {
        (b.name, c["certificate_no"]): c for b in fed.bundles for c in read(b, "certificates.csv")
    }
    revoked, valid = 0, 0
    for b in fed.bundles:
        for c in read(b, "certificates.csv"):
            if c["pathway"] != "reciprocity":
                assert (c["origin_municipality"], c["origin_certificate_no"]) == ("", "")
                continue
            assert (c["provider_id"], c["status"]) == ("", "valid")
            origin = by_no[(c["origin_municipality"], c["origin_certificate_no"])]
            assert origin["qualification_id"] == c["qualification_id"]
            assert origin["issued_on"] < c["issued_on"]
            if origin["status"] == "revoked":
                revoked += 1
                assert origin["status_changed_on"] > c["issued_on"]
            else:
                assert origin["status"] == "valid"
                valid += 1
    assert revoked == planted(fed, "revoked_still_recognised") == 5
    assert valid == 30


def test_planted_anomalies_name_their_subjects(fed: SyntheticFederation) -> None:
    """The rate anomalies are recorded where they were planted."""
    subjects = {(p.kind, p.municipality, p.provider_id, p.group) for p in fed.planted}
    assert ("employment_gap", "M02", None, None) in subjects
    assert ("credential_inflation", "M03", "M03-P4", None) in subjects
    assert ("pass_rate_gap", "M03", "M03-P4", None) in subjects
    assert ("recognition_delay", "M04", None, None) in subjects
    assert ("outcome_disparity", "M05", None, "citizenship_group=foreign") in subjects
    rate_kinds = {"employment_gap", "credential_inflation", "pass_rate_gap", "recognition_delay"}
    rate_kinds.add("outcome_disparity")
    assert not any(p.municipality == "M01" and p.kind in rate_kinds for p in fed.planted)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    """Sizes that cannot hold the plan are refused before anything is written."""
    with pytest.raises(ValueError, match="municipalities"):
        generate_federation(tmp_path, municipalities=1, today=TODAY)
    with pytest.raises(ValueError, match="candidates_per_municipality"):
        generate_federation(tmp_path, candidates_per_municipality=50, today=TODAY)
    assert not any(tmp_path.iterdir())
