"""A synthetic federation of municipal data bundles with known, planted anomalies.

Why: an audit is only trustworthy if it is shown to find what is there and nothing else.
`generate_federation` writes one bundle per municipality (data contract v1, every file and
every optional column) whose ground truth is known: clean municipalities share one set of
rates, so a correct audit finds nothing there, and each planted anomaly is listed in
`SyntheticFederation.planted`. This module is the public entry and only orchestrates; the
parts live beside it:

- params.py: every rate and count, with its source, and which municipality is planted;
- people.py: persons, names, dates of birth, national ids, unique across the federation;
- records.py: rows, bundles and their chronological numbering, the run's shared state;
- events.py: assessments, certificates and employment outcomes of one person;
- population.py: each municipality's providers, trainees, requesters and appeals;
- anomalies.py: the persons planted across municipalities, and the ground-truth list;
- writer.py: the CSV files of one bundle.

Every step draws from one random stream in a fixed order (providers, then the planted
persons, then each municipality's population and appeals), which is what makes a seed give
byte-identical files.

Planted (only for municipalities that exist in the run):
- M02: employment 0.45 at 6 and 0.52 at 12 months (employment_gap).
- M03: provider M03-P4 trains 25 % of M03's candidates, passes 0.99 at the first attempt,
  employment 0.40 / 0.45, in-field 0.30 (credential_inflation, pass_rate_gap and an
  employment_gap for the provider). Side effect: M03's overall employment is ~0.71.
- M04: recognition decision time exponential (median 165 days drawn; about 150 with 65 %
  beyond 90 among the decided, as the longest are still pending at the cut-off), 12 %
  stuck pending, 12 % of candidates request recognition (recognition_delay).
- M05: foreign citizens pass the first attempt at 0.60 against 0.88; foreign share 25 %
  (outcome_disparity). Side effects: M05's overall first-attempt pass rate is ~0.81 and
  more of its candidates appeal (more fails).
- Across municipalities (counts for 5 x 3000, scaled with the federation's size): 40
  persons certified for the same qualification in two municipalities, a few under a name
  variant (cross_municipality_duplicates); 15 who fail in one and pass the same
  qualification in another within 12 months (assessment_shopping); 5 reciprocity
  certificates whose origin certificate was revoked afterwards (revoked_still_recognised);
  30 legitimate reciprocity certificates. Reciprocity holders also appear in two bundles
  with the same qualification, legitimately (pathway `reciprocity`).

Identities are unique across the federation (normalised name pair + date of birth, and
national id), so two bundles share a person exactly when the plan says so.

Left out on purpose (each would be a true gap in clean data, or is not in the contract):
pass rates that vary by qualification, occupations that differ by sex, pay gaps, appeals
that change a result, certificates that follow a full recognition decision (other than the
reciprocity ones above), enrolments and drop-out.

Definitions the ground truth uses: first-attempt pass rate = `pass` / rows with
attempt_no 1; employment rate = (employed + self_employed) / outcome rows at that horizon;
decision time = decided_on - received_on. Every date lies between 2021-01-01 and
`today` - 30 days (the export cut-off); dates of birth 1975-2006. The rates and their
sources are in params.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from fedaudit.synthetic import population
from fedaudit.synthetic.anomalies import (
    RATE_KINDS,
    PlantedAnomaly,
    plant_duplicates,
    plant_reciprocity,
    plant_shopping,
    planted_rates,
)
from fedaudit.synthetic.draws import days
from fedaudit.synthetic.params import (
    DUPLICATES,
    EXPORT_LAG_DAYS,
    RECIPROCITY,
    REVOKED_ORIGINS,
    SCALE_CANDIDATES,
    SHOPPERS,
    START,
    profile,
)
from fedaudit.synthetic.records import Bundle, Rec, Run
from fedaudit.synthetic.writer import write_bundle

__all__ = ["PlantedAnomaly", "SyntheticFederation", "generate_federation"]


@dataclass(frozen=True)
class SyntheticFederation:
    """The bundles written, in municipality order, and their ground truth."""

    bundles: tuple[Path, ...]
    municipalities: tuple[str, ...]
    planted: tuple[PlantedAnomaly, ...]
    clean_municipalities: tuple[str, ...]


def generate_federation(
    out_dir: Path,
    *,
    seed: int = 7,
    municipalities: int = 5,
    candidates_per_municipality: int = 3000,
    today: dt.date | None = None,
) -> SyntheticFederation:
    """Write `out_dir/M01`, `out_dir/M02`, ... and return what was planted where.

    The same seed, size and `today` give byte-identical files. `today` defaults to the
    current date; nothing is dated after `today` - 30 days. Existing files of the same
    names are overwritten; nothing else in `out_dir` is touched.
    """
    today = today or dt.date.today()
    cutoff = days(today, -EXPORT_LAG_DAYS)
    if not 2 <= municipalities <= 99:
        raise ValueError("municipalities must be between 2 and 99")
    if candidates_per_municipality < 200:
        raise ValueError("candidates_per_municipality must be at least 200")
    if (cutoff - START).days < 1000:
        raise ValueError(f"today must be after {days(START, 1000 + EXPORT_LAG_DAYS)}")

    profiles = [profile(i) for i in range(1, municipalities + 1)]
    run = Run(seed, cutoff, tuple(p.code for p in profiles))
    bundles = [Bundle(p, population.providers(run, p)) for p in profiles]

    scale = candidates_per_municipality * municipalities / SCALE_CANDIDATES
    planted_later = [
        *plant_duplicates(run, bundles, max(2, round(DUPLICATES * scale))),
        *plant_shopping(run, bundles, max(1, round(SHOPPERS * scale))),
        *plant_reciprocity(
            run,
            bundles,
            max(1, round(REVOKED_ORIGINS * scale)),
            max(2, round(RECIPROCITY * scale)),
        ),
    ]
    for b in bundles:
        population.fill(run, b, candidates_per_municipality)
        population.appeals(run, b)
    for b in bundles:
        b.number()
    for b in bundles:  # origins are numbered only now, in their own bundle
        for cert in b.rows["CT"]:
            origin = cert.data["origin_certificate_no"]
            if isinstance(origin, Rec):
                cert.data["origin_certificate_no"] = origin.data["certificate_no"]

    planted = [*planted_rates(bundles)]
    planted += [PlantedAnomaly(k, m, p, g, describe()) for k, m, p, g, describe in planted_later]
    out_dir = Path(out_dir)
    paths = []
    for b in bundles:
        write_bundle(b, out_dir / b.code)
        paths.append(out_dir / b.code)
    rate_planted = {p.municipality for p in planted if p.kind in RATE_KINDS}
    return SyntheticFederation(
        bundles=tuple(paths),
        municipalities=tuple(b.code for b in bundles),
        planted=tuple(planted),
        clean_municipalities=tuple(b.code for b in bundles if b.code not in rate_planted),
    )
