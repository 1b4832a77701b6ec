"""The knobs of the synthetic federation: reference data, rates, and which town is planted.

Why: every number that shapes the data lives here, with its source, so the ground truth can be
read (and changed) in one place. The generator modules only apply these values.

Rates. Sources are in research/domain-and-style.md, part A4; everything marked (assumption)
has no source and was chosen to look plausible.
- First-attempt pass 0.88 (BIBB: 91 % first-time pass in the German dual system, rounded
  down); absent 0.03 (assumption); retake pass 0.60; up to 3 attempts, 85 % of those who
  did not pass retake (assumption) 60-180 days later (assumption).
- Certificates: a pass yields one 7-45 days later; 8 % of candidates come through
  prior_learning (assumption). Welder certificates are valid 3 years and professional
  driver certificates 5 (assumption); 70 % of those past their term are expired, the rest
  renewed (assumption). 0.4 % revoked and 0.4 % suspended (assumption).
- Employment: (employed + self_employed) share 0.72 at 6 and 0.80 at 12 months (Eurostat:
  80 % of recent VET graduates employed), men +1 and women -1 point (Eurostat: 1.8-2.2
  points); 90 % of those employed at 6 months still are at 12 (assumption); an outcome is
  recorded for 92 % of certificates whose horizon has passed (assumption); 8 % of the
  employed are self-employed (assumption); in-field 0.70 of the employed (assumption);
  earnings lognormal, median 2300 a month, sigma 0.35 (assumption), the same for every
  group (a realistic pay gap would be a true finding in every municipality).
- Recognition requests from 5 % of candidates (assumption); decision time lognormal with
  median 60 days and 10 % beyond 90 (the statutory three months); 5 % stuck pending,
  received within the last 18 months (assumption), plus those received too recently;
  decisions 52 % full, 45 % partial, 3 % rejected (BQ-Portal 2019-2020).
- Appeals on 25 % of failed, 5 % of absent and 0.5 % of passed assessments (about 3 % of
  all, inside Ofqual's 1-5 %), 30 % of revoked or suspended certificates and rejected
  recognition decisions, 5 % of partial ones; of those decided 18.5 % upheld (Ofqual: 18 %
  of reviews changed the grade), 77.5 % dismissed, 4 % withdrawn (assumption); decided in
  20-120 days, one in ten in 120-400 (assumption), so those lodged lately are pending.
- Citizenship: 85 % national, 13 % foreign, 2 % unknown; national id present for 93 % of
  nationals, 75 % of foreigners, 60 % of the unknown, about 90 % overall (assumption).
- Persons: sex 49 % female, 49 % male, 0.5 % other, 1.5 % unknown; names from eleven
  European and neighbouring pools (people.py), foreign citizens from the pool of their
  country and 18 % of nationals from another pool (assumption); trainees mostly 17-25 at
  their first assessment, prior-learning candidates and recognition requesters older
  (assumption).

Planted rates (`profile`; only for municipalities that exist in the run): M02 low
employment, M03 a diploma mill provider, M04 a slow recognition office, M05 a pass-rate gap
for foreign citizens. The cross-municipality counts below are for 5 x 3000 candidates and are
scaled with the federation's size. federation.py describes each anomaly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

COUNTRY = "AT"
START = dt.date(2021, 1, 1)
EXPORT_LAG_DAYS = 30
DOB_RANGE = (dt.date(1975, 1, 1), dt.date(2006, 12, 31))


# --- reference data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Qualification:
    """One qualification of the shared catalogue; `weight` is its share of trainees."""

    qualification_id: str
    title: str
    isco_code: str
    eqf_level: int
    weight: float
    validity_years: int | None = None


QUALIFICATIONS = (
    Qualification("Q-7411", "Building electrician", "7411", 4, 14),
    Qualification("Q-7231", "Motor vehicle mechanic", "7231", 4, 12),
    Qualification("Q-4110", "General office clerk", "4110", 4, 12),
    Qualification("Q-5120", "Cook", "5120", 4, 10),
    Qualification("Q-5321", "Health care assistant", "5321", 4, 9),
    Qualification("Q-5141", "Hairdresser", "5141", 4, 8),
    Qualification("Q-7115", "Carpenter", "7115", 4, 8),
    Qualification("Q-7126", "Plumber and pipe fitter", "7126", 4, 8),
    Qualification("Q-7212", "Welder", "7212", 3, 6, validity_years=3),
    Qualification("Q-8322", "Professional car driver", "8322", 3, 5, validity_years=5),
    Qualification("Q-7512", "Baker", "7512", 3, 4),
    Qualification("Q-3112", "Civil engineering technician", "3112", 5, 4),
)

TOWNS = (
    ("Stadt Steinbach an der Enns", "Steinbach"),
    ("Marktgemeinde Kaltenbrunn", "Kaltenbrunn"),
    ("Stadt Oberwald", "Oberwald"),
    ("Gemeinde Hollenau", "Hollenau"),
    ("Stadtgemeinde Marktfelden", "Marktfelden"),
    ("Marktgemeinde Seeham", "Seeham"),
    ("Stadt Rabenstein", "Rabenstein"),
    ("Gemeinde Lindach", "Lindach"),
    ("Stadt Grünau im Tal", "Grünau"),
    ("Marktgemeinde Sankt Veit am Moos", "Sankt Veit"),
    ("Gemeinde Wolfsegg", "Wolfsegg"),
    ("Stadt Eichberg", "Eichberg"),
)


# --- rates per municipality -------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """The outcome rates a municipality or a provider draws from."""

    pass_first: float = 0.88
    absent: float = 0.03
    retake_pass: float = 0.60
    emp6: float = 0.72
    emp12: float = 0.80
    in_field: float = 0.70


BASELINE = Rates()
MILL = Rates(pass_first=0.99, absent=0.005, emp6=0.40, emp12=0.45, in_field=0.30)
MILL_SHARE = 0.25
# Exponential decision times in the slow office. Requests still open at the cut-off are
# pending, which hides the longest times; 165 makes the decided ones show a median near 150.
SLOW_MEDIAN_DAYS = 165
RETAKE_SHARE = 0.85
PRIOR_LEARNING_SHARE = 0.08
OUTCOME_COVERAGE = 0.92
STAY_EMPLOYED = 0.90
SEX_EMPLOYMENT_SHIFT = {"male": 0.01, "female": -0.01}
NOT_EMPLOYED = (("unemployed", 55), ("inactive", 15), ("in_education", 20), ("unknown", 10))
DECISIONS = (("full", 52), ("partial", 45), ("rejected", 3))
APPEAL_OUTCOMES = (("upheld", 18.5), ("dismissed", 77.5), ("withdrawn", 4))

# Planted across municipalities, per 15,000 candidates (5 x 3000), with a floor each.
SCALE_CANDIDATES = 15000
DUPLICATES = 40
SHOPPERS = 15
REVOKED_ORIGINS = 5
RECIPROCITY = 30


@dataclass(frozen=True)
class Profile:
    """One municipality's identity and the rates (planted or baseline) it draws from."""

    code: str
    name: str
    town: str
    rates: Rates = BASELINE
    foreign_share: float = 0.13
    foreign_pass_first: float | None = None
    request_share: float = 0.05
    slow_recognition: bool = False
    stuck_pending: float = 0.05
    mill: bool = False


def profile(index: int) -> Profile:
    """Municipality `index` (1-based): M02-M05 carry the planted rate anomalies."""
    code = f"M{index:02d}"
    name, town = TOWNS[index - 1] if index <= len(TOWNS) else (f"Gemeinde {code}", code)
    match index:
        case 2:
            return Profile(code, name, town, rates=Rates(emp6=0.45, emp12=0.52))
        case 3:
            return Profile(code, name, town, mill=True)
        case 4:
            return Profile(
                code, name, town, slow_recognition=True, stuck_pending=0.12, request_share=0.12
            )
        case 5:
            return Profile(code, name, town, foreign_share=0.25, foreign_pass_first=0.60)
    return Profile(code, name, town)
