"""A synthetic federation of municipal data bundles with known, planted anomalies.

Why: an audit is only trustworthy if it is shown to find what is there and nothing else.
`generate_federation` writes one bundle per municipality (data contract v1, every file and
every optional column) whose ground truth is known: clean municipalities share one set of
rates, so a correct audit finds nothing there, and each planted anomaly is listed in
`SyntheticFederation.planted`.

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
  European and neighbouring pools, foreign citizens from the pool of their country and
  18 % of nationals from another pool (assumption); trainees mostly 17-25 at their first
  assessment, prior-learning candidates and recognition requesters older (assumption).

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
`today` - 30 days (the export cut-off); dates of birth 1975-2006.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import functools
import math
import random
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["PlantedAnomaly", "SyntheticFederation", "generate_federation"]

COUNTRY = "AT"
START = dt.date(2021, 1, 1)
EXPORT_LAG_DAYS = 30
_DOB_RANGE = (dt.date(1975, 1, 1), dt.date(2006, 12, 31))


@dataclass(frozen=True)
class PlantedAnomaly:
    """One anomaly the audits should find; `kind` is a report.json finding kind."""

    kind: str
    municipality: str
    provider_id: str | None
    group: str | None
    description: str


@dataclass(frozen=True)
class SyntheticFederation:
    """The bundles written, in municipality order, and their ground truth."""

    bundles: tuple[Path, ...]
    municipalities: tuple[str, ...]
    planted: tuple[PlantedAnomaly, ...]
    clean_municipalities: tuple[str, ...]


# --- reference data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Qualification:
    qualification_id: str
    title: str
    isco_code: str
    eqf_level: int
    weight: float
    validity_years: int | None = None


_QUALIFICATIONS = (
    _Qualification("Q-7411", "Building electrician", "7411", 4, 14),
    _Qualification("Q-7231", "Motor vehicle mechanic", "7231", 4, 12),
    _Qualification("Q-4110", "General office clerk", "4110", 4, 12),
    _Qualification("Q-5120", "Cook", "5120", 4, 10),
    _Qualification("Q-5321", "Health care assistant", "5321", 4, 9),
    _Qualification("Q-5141", "Hairdresser", "5141", 4, 8),
    _Qualification("Q-7115", "Carpenter", "7115", 4, 8),
    _Qualification("Q-7126", "Plumber and pipe fitter", "7126", 4, 8),
    _Qualification("Q-7212", "Welder", "7212", 3, 6, validity_years=3),
    _Qualification("Q-8322", "Professional car driver", "8322", 3, 5, validity_years=5),
    _Qualification("Q-7512", "Baker", "7512", 3, 4),
    _Qualification("Q-3112", "Civil engineering technician", "3112", 5, 4),
)

_TOWNS = (
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

# Name pools by origin: (male given names, female given names, family names "male/female").
_NAMES: dict[str, tuple[str, str, str]] = {
    "at": (
        "Lukas Tobias Florian David Maximilian Jürgen Stefan Michael Andreas Thomas Fabian Jonas",
        "Anna Sophie Lena Katharina Julia Sarah Hannah Käthe Verena Theresa Lisa Magdalena",
        "Gruber Huber Bauer Wagner Müller Pichler Steiner Moser Mayer Hofer Leitner Berger "
        "Fuchs Eder Fischer Schmid Winkler Weber Schwarz Maier Reiter Brunner Lang Auer "
        "Baumgartner Binder Lechner Wallner Aigner Ebner Koller Haas Höller Strauß Jäger Pöll",
    ),
    "pl": (
        "Łukasz Piotr Krzysztof Michał Paweł Tomasz",
        "Małgorzata Agnieszka Katarzyna Zofia Joanna Magdalena",
        "Kowalski/Kowalska Wiśniewski/Wiśniewska Nowak Wójcik Kamiński/Kamińska "
        "Lewandowski/Lewandowska Zieliński/Zielińska Szymański/Szymańska",
    ),
    "hu": (
        "Zoltán László Gábor Balázs István Péter",
        "Réka Eszter Zsófia Katalin Anikó Krisztina",
        "Nagy Kovács Tóth Szabó Horváth Varga Kiss Molnár",
    ),
    "bcs": (
        "Ivan Marko Luka Matej Nikola Dženan",
        "Ana Ivana Marija Jelena Lejla Petra",
        "Horvat Kovačević Babić Marić Jurić Petrović Jovanović Hodžić Begić Đorđević",
    ),
    "ro": (
        "Ionuț Andrei Mihai Alexandru Ștefan Cristian",
        "Andreea Ioana Elena Maria Alexandra Mădălina",
        "Popescu Ionescu Popa Dumitru Stan Constantin Rădulescu Munteanu",
    ),
    "tr": (
        "Mehmet Mustafa Emre Can Murat Burak",
        "Ayşe Fatma Elif Zeynep Emine Büşra",
        "Yılmaz Kaya Demir Şahin Çelik Yıldız Öztürk Aydın",
    ),
    "cz": (
        "Jiří Jan Petr Tomáš Martin Lukáš",
        "Tereza Lucie Kateřina Jana Petra Zuzana",
        "Novák/Nováková Dvořák/Dvořáková Svoboda/Svobodová Černý/Černá "
        "Procházka/Procházková Kučera/Kučerová",
    ),
    "it": (
        "Marco Luca Giuseppe Francesco Matteo Alessandro",
        "Giulia Francesca Chiara Sara Martina Federica",
        "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci",
    ),
    "es": (
        "José Javier Carlos Álvaro Sergio Raúl",
        "María Lucía Carmen Inés Sofía Ángela",
        "García Fernández González Rodríguez López Martínez Sánchez Pérez",
    ),
    "ua": (
        "Oleksandr Andrii Dmytro Serhii Taras Mykola",
        "Olena Iryna Oksana Nataliia Yuliia Kateryna",
        "Shevchenko Kovalenko Bondarenko Tkachenko Kravchenko Melnyk Boiko Marchenko",
    ),
    "ar": (
        "Mohammad Ahmad Omar Khaled Yousef Hassan",
        "Fatima Amina Rania Layla Noor Hala",
        "Al-Hassan Haddad Khalil Nasser Saleh Darwish Mansour Hamdan",
    ),
}
# Foreign citizenships (weights) and the name pool each draws from.
_FOREIGN = {
    "DE": (20, "at"),
    "RO": (12, "ro"),
    "HU": (10, "hu"),
    "TR": (10, "tr"),
    "HR": (8, "bcs"),
    "RS": (8, "bcs"),
    "BA": (8, "bcs"),
    "PL": (8, "pl"),
    "SK": (6, "cz"),
    "UA": (6, "ua"),
    "SY": (5, "ar"),
    "CZ": (4, "cz"),
    "IT": (3, "it"),
    "ES": (2, "es"),
}
_FOREIGN_CODES = tuple(_FOREIGN)
_FOREIGN_WEIGHTS = tuple(w for w, _ in _FOREIGN.values())
_GROUPS = tuple(_NAMES)
_POOLS = {g: tuple(tuple(pool.split()) for pool in pools) for g, pools in _NAMES.items()}

_SPECIAL_LETTERS = str.maketrans({"ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i", "ß": "ss"})


@functools.lru_cache(maxsize=4096)
def _strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPECIAL_LETTERS))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@functools.lru_cache(maxsize=4096)
def _norm(name: str) -> str:
    return "".join(ch for ch in _strip_accents(name).casefold() if ch.isalpha())


# --- rates per municipality -------------------------------------------------------------------


@dataclass(frozen=True)
class _Rates:
    pass_first: float = 0.88
    absent: float = 0.03
    retake_pass: float = 0.60
    emp6: float = 0.72
    emp12: float = 0.80
    in_field: float = 0.70


_BASELINE = _Rates()
_MILL = _Rates(pass_first=0.99, absent=0.005, emp6=0.40, emp12=0.45, in_field=0.30)
_MILL_SHARE = 0.25
# Exponential decision times in the slow office. Requests still open at the cut-off are
# pending, which hides the longest times; 165 makes the decided ones show a median near 150.
_SLOW_MEDIAN_DAYS = 165
_RETAKE_SHARE = 0.85
_PRIOR_LEARNING_SHARE = 0.08
_OUTCOME_COVERAGE = 0.92
_STAY_EMPLOYED = 0.90
_SEX_EMPLOYMENT_SHIFT = {"male": 0.01, "female": -0.01}
_NOT_EMPLOYED = (("unemployed", 55), ("inactive", 15), ("in_education", 20), ("unknown", 10))
_DECISIONS = (("full", 52), ("partial", 45), ("rejected", 3))
_APPEAL_OUTCOMES = (("upheld", 18.5), ("dismissed", 77.5), ("withdrawn", 4))


@dataclass(frozen=True)
class _Profile:
    code: str
    name: str
    town: str
    rates: _Rates = _BASELINE
    foreign_share: float = 0.13
    foreign_pass_first: float | None = None
    request_share: float = 0.05
    slow_recognition: bool = False
    stuck_pending: float = 0.05
    mill: bool = False


def _profile(index: int) -> _Profile:
    code = f"M{index:02d}"
    name, town = _TOWNS[index - 1] if index <= len(_TOWNS) else (f"Gemeinde {code}", code)
    match index:
        case 2:
            return _Profile(code, name, town, rates=_Rates(emp6=0.45, emp12=0.52))
        case 3:
            return _Profile(code, name, town, mill=True)
        case 4:
            return _Profile(
                code, name, town, slow_recognition=True, stuck_pending=0.12, request_share=0.12
            )
        case 5:
            return _Profile(code, name, town, foreign_share=0.25, foreign_pass_first=0.60)
    return _Profile(code, name, town)


# --- records (mutable until numbered) ---------------------------------------------------------


@dataclass(frozen=True)
class _Provider:
    provider_id: str
    name: str
    provider_type: str
    accreditation_status: str
    weight: float
    offers: tuple[_Qualification, ...]
    rates: _Rates | None = None


@dataclass(frozen=True)
class _Person:
    given: str
    family: str
    dob: dt.date
    sex: str
    citizenship: str | None
    national_id: str | None


@dataclass(eq=False, slots=True)
class _Rec:
    """Any row: `first` and `seq` order the rows before ids are given, like a registry."""

    kind: str
    first: dt.date
    seq: int
    data: dict[str, object]
    id: str = ""


class _Bundle:
    """The rows of one municipality, built in any order and numbered chronologically."""

    def __init__(self, profile: _Profile, providers: tuple[_Provider, ...]) -> None:
        self.profile = profile
        self.code = profile.code
        self.providers = providers
        self.rows: dict[str, list[_Rec]] = {k: [] for k in ("C", "A", "CT", "RR", "AP", "EO")}
        self._seq = 0

    def add(self, kind: str, first: dt.date, **data: object) -> _Rec:
        self._seq += 1
        rec = _Rec(kind, first, self._seq, data)
        self.rows[kind].append(rec)
        return rec

    def number(self) -> None:
        per_year: Counter[int] = Counter()
        for kind, recs in self.rows.items():
            recs.sort(key=lambda r: (r.first, r.seq))
            width = 5 if kind == "C" else 6
            for i, rec in enumerate(recs, 1):
                rec.id = f"{self.code}-{kind}{i:0{width}d}"
                if kind == "CT":  # issuer numbers run per year, as registries number them
                    year = rec.first.year
                    per_year[year] += 1
                    rec.data["certificate_no"] = f"{self.code}-{year}-{per_year[year]:05d}"


# --- generation ---------------------------------------------------------------------------------


def _days(d: dt.date, n: int) -> dt.date:
    return d + dt.timedelta(days=n)


def _add_months(d: dt.date, months: int) -> dt.date:
    year, month0 = divmod(d.month - 1 + months, 12)
    year += d.year
    return dt.date(year, month0 + 1, min(d.day, calendar.monthrange(year, month0 + 1)[1]))


def _pick(rng: random.Random, pairs: Sequence[tuple[str, float]]) -> str:
    u = rng.random() * sum(w for _, w in pairs)
    for key, weight in pairs:
        u -= weight
        if u < 0:
            return key
    return pairs[-1][0]


class _Gen:
    """Shared state of one run: the random stream, the cut-off, identities in use."""

    def __init__(self, seed: int, cutoff: dt.date, codes: tuple[str, ...]) -> None:
        self.rng = random.Random(f"fedaudit-synthetic:{seed}")
        self.cutoff = cutoff
        self.codes = codes
        self.last_assessment = _days(cutoff, -45)  # leaves room to issue the certificate
        self._identities: set[tuple[str, str, dt.date]] = set()
        self._national_ids: set[str] = set()

    def date(self, lo: dt.date, hi: dt.date) -> dt.date:
        return _days(lo, self.rng.randint(0, max(0, (hi - lo).days)))

    # identities

    def person(self, at: dt.date, foreign_share: float, *, adult: bool = False) -> _Person:
        rng = self.rng
        u = rng.random()
        if u < 0.02:
            citizenship, group, id_share = None, rng.choice(_GROUPS), 0.60
        elif u < 0.02 + foreign_share:
            citizenship = rng.choices(_FOREIGN_CODES, _FOREIGN_WEIGHTS)[0]
            group, id_share = _FOREIGN[citizenship][1], 0.75
        else:
            group = "at" if rng.random() < 0.82 else rng.choice(_GROUPS)
            citizenship, id_share = COUNTRY, 0.93
        sex = _pick(rng, (("female", 49), ("male", 49), ("other", 0.5), ("unknown", 1.5)))
        for _ in range(200):
            given, family = self._name(group, sex)
            dob = self._dob(at, adult)
            first, second = sorted((_norm(given), _norm(family)))
            if (first, second, dob) not in self._identities:
                self._identities.add((first, second, dob))
                break
        else:  # pragma: no cover - the pools hold millions of combinations
            raise RuntimeError("could not draw a unique identity")
        national_id = self._national_id(dob) if rng.random() < id_share else None
        return _Person(given, family, dob, sex, citizenship, national_id)

    def _name(self, group: str, sex: str) -> tuple[str, str]:
        males, females, families = _POOLS[group]
        female = sex == "female" or (sex not in ("female", "male") and self.rng.random() < 0.5)
        given = self.rng.choice(females if female else males)
        forms = self.rng.choice(families).split("/")
        return given, forms[-1] if female else forms[0]

    def _dob(self, at: dt.date, adult: bool) -> dt.date:
        lo, hi = _DOB_RANGE
        hi = min(hi, dt.date(at.year - 16, at.month, min(at.day, 28)))
        for _ in range(50):
            age = self.rng.triangular(24, 55, 35) if adult else self.rng.triangular(17, 40, 19)
            dob = _days(at, -round(age * 365.25))
            if lo <= dob <= hi:
                return dob
        return self.date(lo, hi)

    def _national_id(self, dob: dt.date) -> str:
        """An Austrian-style social insurance number: serial, check digit, DDMMYY."""
        tail = dob.strftime("%d%m%y")
        weights = (3, 7, 9, 5, 8, 4, 2, 1, 6)
        while True:
            serial = str(self.rng.randint(100, 999))
            check = sum(int(c) * w for c, w in zip(serial + tail, weights, strict=True)) % 11
            nid = f"{serial}{check}{tail}"
            if check < 10 and nid not in self._national_ids:
                self._national_ids.add(nid)
                return nid

    # registry events

    def candidate(
        self, b: _Bundle, p: _Person, first: dt.date, *, variant: str | None = None
    ) -> _Rec:
        given, family, nid = p.given, p.family, p.national_id
        if variant == "accent_dropped":
            given, family = _strip_accents(given), _strip_accents(family)
        elif variant == "case_changed":
            family = family.upper()
        elif variant == "names_swapped":
            given, family = family, given
        return b.add(
            "C",
            first,
            national_id=nid,
            given_name=given,
            family_name=family,
            date_of_birth=p.dob,
            sex=p.sex,
            citizenship=p.citizenship,
        )

    def rates(self, b: _Bundle, prov: _Provider, cand: _Rec) -> _Rates:
        rates = prov.rates or b.profile.rates
        cit = cand.data["citizenship"]
        if b.profile.foreign_pass_first is not None and cit not in (None, COUNTRY):
            rates = replace(rates, pass_first=b.profile.foreign_pass_first)
        return rates

    def sit(
        self,
        b: _Bundle,
        cand: _Rec,
        qual: _Qualification,
        prov: _Provider,
        *,
        on: dt.date,
        forced: Sequence[str] | None = None,
    ) -> list[_Rec]:
        """Assessment attempts until a pass, three attempts, or the candidate gives up."""
        rng, rates, out = self.rng, self.rates(b, prov, cand), []
        for attempt in (1, 2, 3):
            if forced is not None:
                result = forced[attempt - 1]
            else:
                p_pass = rates.pass_first if attempt == 1 else rates.retake_pass
                absent = min(rates.absent, (1 - p_pass) / 2)
                u = rng.random()
                result = "pass" if u < p_pass else "absent" if u < p_pass + absent else "fail"
            out.append(
                b.add(
                    "A",
                    on,
                    candidate_id=cand,
                    qualification_id=qual.qualification_id,
                    provider_id=prov.provider_id,
                    attempt_no=attempt,
                    assessed_on=on,
                    result=result,
                )
            )
            done = forced is not None and attempt == len(forced)
            if result == "pass" or done or (forced is None and rng.random() > _RETAKE_SHARE):
                break
            on = _days(on, rng.randint(60, 180))
            if on > self.last_assessment:
                break
        return out

    def certify(
        self,
        b: _Bundle,
        cand: _Rec,
        qual: _Qualification,
        prov: _Provider | None,
        *,
        pathway: str,
        issued: dt.date,
        origin: tuple[str, _Rec] | None = None,
        keep_valid: bool = False,
    ) -> _Rec:
        rng, status, changed = self.rng, "valid", None
        if not keep_valid:
            expiry = _add_months(issued, 12 * qual.validity_years) if qual.validity_years else None
            u = rng.random()
            if expiry is not None and expiry <= self.cutoff and rng.random() < 0.7:
                status, changed = "expired", expiry
            elif u < 0.008:
                changed = _days(issued, rng.randint(30, 700))
                if changed <= self.cutoff:
                    status = "revoked" if u < 0.004 else "suspended"
                else:
                    changed = None
        cert = b.add(
            "CT",
            issued,
            candidate_id=cand,
            qualification_id=qual.qualification_id,
            provider_id=prov.provider_id if prov else None,
            pathway=pathway,
            origin_municipality=origin[0] if origin else None,
            origin_certificate_no=origin[1] if origin else None,
            issued_on=issued,
            status=status,
            status_changed_on=changed,
        )
        if prov is not None:
            self._outcomes(b, cand, cert, self.rates(b, prov, cand), issued)
        return cert

    def _outcomes(self, b: _Bundle, cand: _Rec, cert: _Rec, rates: _Rates, issued: dt.date) -> None:
        rng = self.rng
        shift = _SEX_EMPLOYMENT_SHIFT.get(str(cand.data["sex"]), 0.0)
        p6, p12 = rates.emp6 + shift, rates.emp12 + shift
        employed6 = rng.random() < p6
        p12_given = _STAY_EMPLOYED if employed6 else (p12 - _STAY_EMPLOYED * p6) / (1 - p6)
        employed12 = rng.random() < p12_given
        in_field = rng.random() < rates.in_field
        earnings = 2300 * math.exp(rng.gauss(0, 0.35))
        for months, employed, growth in ((6, employed6, 1.0), (12, employed12, 1.03)):
            observed = _add_months(issued, months)
            if observed > self.cutoff or rng.random() > _OUTCOME_COVERAGE:
                continue
            if employed:
                status = "self_employed" if rng.random() < 0.08 else "employed"
                missing = 0.30 if status == "self_employed" else 0.08
                pay = None if rng.random() < missing else round(earnings * growth)
                field: bool | None = in_field
            else:
                status, pay, field = _pick(rng, _NOT_EMPLOYED), None, None
            b.add(
                "EO",
                observed,
                candidate_id=cand,
                certificate_id=cert,
                months_after=months,
                status=status,
                in_field=field,
                monthly_earnings=pay,
            )

    def decision_days(self, b: _Bundle) -> int:
        if b.profile.slow_recognition:
            return min(900, max(5, round(self.rng.expovariate(math.log(2) / _SLOW_MEDIAN_DAYS))))
        return max(5, round(self.rng.lognormvariate(math.log(60), 0.316)))

    def pick_provider(self, b: _Bundle, qual: _Qualification) -> _Provider:
        offering = [p for p in b.providers if qual in p.offers]
        return self.rng.choices(offering, [p.weight for p in offering])[0]


def _providers(gen: _Gen, prof: _Profile) -> tuple[_Provider, ...]:
    """4-6 providers: a vocational school, the chamber (offers everything), then others."""
    rng, town, code = gen.rng, prof.town, prof.code
    quals, weights = _QUALIFICATIONS, [q.weight for q in _QUALIFICATIONS]

    def offers(n: int) -> tuple[_Qualification, ...]:
        chosen: list[_Qualification] = []
        while len(chosen) < n:
            q = rng.choices(quals, weights)[0]
            if q not in chosen:
                chosen.append(q)
        return tuple(q for q in quals if q in chosen)

    family = rng.choice(_NAMES["at"][2].split())
    others = {
        "company": (f"Stadtwerke {town} Lehrwerkstatt", f"Autohaus {family} GmbH"),
        "private": (f"BFI {town}", f"WIFI {town}"),
        "public_service": (f"AMS Ausbildungszentrum {town}",),
    }
    specs: list[tuple[str, str, float, tuple[_Qualification, ...], _Rates | None]] = [
        ("school", f"Landesberufsschule {town}", 0.35, offers(9), None),
        ("chamber", f"Lehrlingsstelle der Wirtschaftskammer {town}", 0.20, quals, None),
    ]
    kinds = ["company", "public_service", "private", "company"]
    count = 5 if prof.mill else rng.randint(4, 6)
    for i in range(2, count):
        if prof.mill and i == 3:
            mill = ("private", f"Kompetenzakademie {town} GmbH", 0.0, offers(5), _MILL)
            specs.append(mill)
            continue
        kind = kinds[i - 2] if not prof.mill else ("company", "private", "public_service")[i - 2]
        name = rng.choice(others[kind])
        if any(s[1] == name for s in specs):
            name = f"{name} Ost"
        n = {"company": 3, "private": 5, "public_service": 5}[kind]
        specs.append((kind, name, rng.uniform(0.08, 0.2), offers(n), None))
    total = sum(s[2] for s in specs)
    scale = (1 - _MILL_SHARE) / total if prof.mill else 1 / total
    out = []
    for i, (kind, name, weight, offered, rates) in enumerate(specs, 1):
        status = "conditional" if i >= 3 and rates is None and rng.random() < 0.15 else "accredited"
        w = _MILL_SHARE if rates is not None else weight * scale
        out.append(_Provider(f"{code}-P{i}", name, kind, status, w, offered, rates))
    return tuple(out)


# --- plans across municipalities ----------------------------------------------------------------

_Planted = tuple[str, str, str | None, str | None, Callable[[], str]]


def _quals_draw(gen: _Gen, pool: Sequence[_Qualification] = _QUALIFICATIONS) -> _Qualification:
    return gen.rng.choices(pool, [q.weight for q in pool])[0]


def _plant_duplicates(gen: _Gen, bundles: list[_Bundle], n: int) -> list[_Planted]:
    rng, out = gen.rng, []
    variants = ["accent_dropped", "case_changed", "names_swapped"]
    for i in range(n):
        a, b = rng.sample(bundles, 2)
        qual = _quals_draw(gen)
        first_a = gen.date(START, _days(gen.cutoff, -760))
        person = gen.person(first_a, a.profile.foreign_share)
        variant = None
        if i % 7 == 3 and person.national_id:  # a few name variants, always with an id
            accented = _strip_accents(person.given + person.family) != person.given + person.family
            variant = "accent_dropped" if accented else variants[1 + (i // 7) % 2]
        ca = gen.candidate(a, person, first_a)
        cert_a = _pass_and_certify(gen, a, ca, qual, on=first_a, pathway="training")
        first_b = min(gen.last_assessment, _days(cert_a.first, rng.randint(120, 720)))
        pathway = "prior_learning" if rng.random() < 0.5 else "training"
        cb = gen.candidate(b, person, first_b, variant=variant)
        cert_b = _pass_and_certify(gen, b, cb, qual, on=first_b, pathway=pathway)
        note = f"; name variant in {b.code}: {variant}" if variant else ""
        out.append(
            (
                "cross_municipality_duplicates",
                b.code,
                None,
                None,
                lambda a=a, b=b, q=qual, x=cert_a, y=cert_b, note=note: (
                    f"one person certified for {q.qualification_id} (ISCO {q.isco_code}) in "
                    f"{a.code} ({x.data['certificate_no']}) and again in {b.code} "
                    f"({y.data['certificate_no']}){note}"
                ),
            )
        )
    return out


def _pass_and_certify(
    gen: _Gen, b: _Bundle, cand: _Rec, qual: _Qualification, *, on: dt.date, pathway: str
) -> _Rec:
    prov = gen.pick_provider(b, qual)
    gen.sit(b, cand, qual, prov, on=on, forced=("pass",))
    issued = _days(on, gen.rng.randint(7, 45))
    return gen.certify(b, cand, qual, prov, pathway=pathway, issued=issued)


def _plant_shopping(gen: _Gen, bundles: list[_Bundle], n: int) -> list[_Planted]:
    rng, out = gen.rng, []
    for _ in range(n):
        a, b = rng.sample(bundles, 2)
        mill = next((p for p in b.providers if p.rates is not None), None)
        to_mill = mill is not None and rng.random() < 0.7
        qual = _quals_draw(gen, mill.offers if to_mill and mill else _QUALIFICATIONS)
        first_a = gen.date(START, _days(gen.cutoff, -560))
        ca = gen.candidate(a, gen.person(first_a, a.profile.foreign_share), first_a)
        forced = ("fail", "fail") if rng.random() < 0.4 else ("fail",)
        fails = gen.sit(a, ca, qual, gen.pick_provider(a, qual), on=first_a, forced=forced)
        last_fail, failed = fails[-1].first, len(fails)
        on = _days(last_fail, rng.randint(45, 300))
        cb = gen.candidate(b, _person_of(ca), on)
        prov = mill if to_mill and mill else gen.pick_provider(b, qual)
        gen.sit(b, cb, qual, prov, on=on, forced=("pass",))
        issued = _days(on, rng.randint(7, 40))
        cert = gen.certify(b, cb, qual, prov, pathway="training", issued=issued)
        out.append(
            (
                "assessment_shopping",
                b.code,
                prov.provider_id,
                None,
                lambda a=a, b=b, q=qual, f=last_fail, on=on, c=cert, k=failed: (
                    f"{k} failed attempt(s) at {q.qualification_id} (ISCO {q.isco_code}) in "
                    f"{a.code}, the last on {f.isoformat()}; passed in {b.code} on "
                    f"{on.isoformat()} ({(on - f).days} days later), "
                    f"certificate {c.data['certificate_no']}"
                ),
            )
        )
    return out


def _person_of(cand: _Rec) -> _Person:
    d = cand.data
    return _Person(
        str(d["given_name"]),
        str(d["family_name"]),
        d["date_of_birth"],  # type: ignore[arg-type]
        str(d["sex"]),
        d["citizenship"],  # type: ignore[arg-type]
        d["national_id"],  # type: ignore[arg-type]
    )


def _plant_reciprocity(
    gen: _Gen, bundles: list[_Bundle], revoked: int, legitimate: int
) -> list[_Planted]:
    rng, out = gen.rng, []
    lasting = [q for q in _QUALIFICATIONS if q.validity_years is None]
    for i in range(revoked + legitimate):
        a, b = rng.sample(bundles, 2)
        qual = _quals_draw(gen, lasting)
        first_a = gen.date(START, _days(gen.cutoff, -800))
        ca = gen.candidate(a, gen.person(first_a, a.profile.foreign_share), first_a)
        prov = gen.pick_provider(a, qual)
        gen.sit(a, ca, qual, prov, on=first_a, forced=("pass",))
        origin = gen.certify(
            a,
            ca,
            qual,
            prov,
            pathway="training",
            issued=_days(first_a, rng.randint(7, 45)),
            keep_valid=True,
        )
        received = _days(origin.first, rng.randint(30, 400))
        for _ in range(20):
            decided = _days(received, gen.decision_days(b))
            if decided <= _days(gen.cutoff, -30):
                break
        else:
            decided = _days(gen.cutoff, -30)
        cb = gen.candidate(b, _person_of(ca), received)
        b.add(
            "RR",
            received,
            candidate_id=cb,
            qualification_id=qual.qualification_id,
            origin_municipality=a.code,
            received_on=received,
            decided_on=decided,
            decision="full",
        )
        cert = gen.certify(
            b,
            cb,
            qual,
            None,
            pathway="reciprocity",
            issued=decided,
            origin=(a.code, origin),
            keep_valid=True,
        )
        if i < revoked:
            origin.data["status"] = "revoked"
            origin.data["status_changed_on"] = _days(
                decided, rng.randint(20, min(365, (gen.cutoff - decided).days))
            )
            out.append(
                (
                    "revoked_still_recognised",
                    b.code,
                    None,
                    None,
                    lambda a=a, b=b, o=origin, c=cert: (
                        f"{b.code} reciprocity certificate {c.data['certificate_no']} recognises "
                        f"{a.code} certificate {o.data['certificate_no']}, revoked there on "
                        f"{o.data['status_changed_on']}"
                    ),
                )
            )
    return out


# --- local population ---------------------------------------------------------------------------


def _fill(gen: _Gen, b: _Bundle, total: int) -> None:
    """Trainees and recognition requesters up to `total` candidate rows."""
    rng, prof = gen.rng, b.profile
    requesters = round(prof.request_share * total)
    trainees = total - requesters - len(b.rows["C"])
    if trainees < 0:
        raise ValueError("candidates_per_municipality is too small for the planted persons")
    weights = [p.weight for p in b.providers]
    for _ in range(trainees):
        prov = rng.choices(b.providers, weights)[0]
        qual = _quals_draw(gen, prov.offers)
        on = gen.date(START, _days(gen.cutoff, -60))
        prior = rng.random() < _PRIOR_LEARNING_SHARE
        cand = gen.candidate(b, gen.person(on, prof.foreign_share, adult=prior), on)
        last = gen.sit(b, cand, qual, prov, on=on)[-1]
        if last.data["result"] == "pass":
            issued = _days(last.first, rng.randint(7, 45))
            pathway = "prior_learning" if prior else "training"
            gen.certify(b, cand, qual, prov, pathway=pathway, issued=issued)
    others = [code for code in gen.codes if code != b.code]
    for _ in range(requesters):
        # A stuck file is overdue but not forgotten: it arrived within the last 18 months.
        stuck = rng.random() < prof.stuck_pending
        received = gen.date(_days(gen.cutoff, -540) if stuck else START, gen.cutoff)
        cand = gen.candidate(b, gen.person(received, prof.foreign_share, adult=True), received)
        decided: dt.date | None = _days(received, gen.decision_days(b))
        if stuck or decided > gen.cutoff:  # type: ignore[operator]
            decided = None
        b.add(
            "RR",
            received,
            candidate_id=cand,
            qualification_id=_quals_draw(gen).qualification_id,
            origin_municipality=rng.choice(others),
            received_on=received,
            decided_on=decided,
            decision="pending" if decided is None else _pick(rng, _DECISIONS),
        )


def _appeals(gen: _Gen, b: _Bundle) -> None:
    rng = gen.rng
    subjects: list[tuple[str, _Rec, dt.date, float]] = []
    share = {"fail": 0.25, "absent": 0.05, "pass": 0.005}
    subjects += [("assessment", a, a.first, share[str(a.data["result"])]) for a in b.rows["A"]]
    for c in b.rows["CT"]:
        if c.data["status"] in ("revoked", "suspended"):
            changed: dt.date = c.data["status_changed_on"]  # type: ignore[assignment]
            subjects.append(("certificate", c, changed, 0.3))
    for r in b.rows["RR"]:
        p = {"rejected": 0.3, "partial": 0.05}.get(str(r.data["decision"]), 0.0)
        if p:
            subjects.append(("recognition", r, r.data["decided_on"], p))  # type: ignore[arg-type]
    for subject_type, rec, when, p in subjects:
        if rng.random() >= p:
            continue
        lodged = _days(when, rng.randint(5, 30))
        if lodged > gen.cutoff:
            continue
        outcome = _pick(rng, _APPEAL_OUTCOMES)
        slow = rng.random() < 0.1
        decided: dt.date | None = _days(
            lodged, rng.randint(120, 400) if slow else rng.randint(20, 120)
        )
        if decided > gen.cutoff:  # type: ignore[operator]
            outcome, decided = "pending", None
        b.add(
            "AP",
            lodged,
            candidate_id=rec.data["candidate_id"],
            subject_type=subject_type,
            subject_id=rec,
            lodged_on=lodged,
            decided_on=decided,
            outcome=outcome,
        )


# --- writing ------------------------------------------------------------------------------------


def _cols(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Exactly the columns of data-contract.md, optional ones included, in its order.
_HEADERS = {
    "municipality.csv": _cols("municipality_code name country"),
    "providers.csv": _cols("provider_id name provider_type accreditation_status"),
    "qualifications.csv": _cols("qualification_id title isco_code eqf_level"),
    "candidates.csv": _cols(
        "candidate_id national_id given_name family_name date_of_birth sex citizenship"
    ),
    "assessments.csv": _cols(
        "assessment_id candidate_id qualification_id provider_id attempt_no assessed_on result"
    ),
    "certificates.csv": _cols(
        "certificate_id certificate_no candidate_id qualification_id provider_id pathway "
        "origin_municipality origin_certificate_no issued_on status status_changed_on"
    ),
    "recognition_requests.csv": _cols(
        "request_id candidate_id qualification_id origin_municipality received_on "
        "decided_on decision"
    ),
    "appeals.csv": _cols(
        "appeal_id candidate_id subject_type subject_id lodged_on decided_on outcome"
    ),
    "employment_outcomes.csv": _cols(
        "outcome_id candidate_id certificate_id months_after status in_field monthly_earnings"
    ),
}
_FILE_OF_KIND = {
    "C": ("candidates.csv", "candidate_id"),
    "A": ("assessments.csv", "assessment_id"),
    "CT": ("certificates.csv", "certificate_id"),
    "RR": ("recognition_requests.csv", "request_id"),
    "AP": ("appeals.csv", "appeal_id"),
    "EO": ("employment_outcomes.csv", "outcome_id"),
}


def _row(rec: _Rec) -> dict[str, object]:
    """The CSV row: records become their ids, dates ISO text, booleans `true`/`false`."""
    row: dict[str, object] = {_FILE_OF_KIND[rec.kind][1]: rec.id}
    for key, value in rec.data.items():
        kind = type(value)
        if kind is dt.date:
            row[key] = value.isoformat()  # type: ignore[attr-defined]
        elif kind is _Rec:
            row[key] = value.id  # type: ignore[attr-defined]
        elif kind is bool:
            row[key] = "true" if value else "false"
        else:
            row[key] = value
    return row


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)


def _write(b: _Bundle, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    prof = b.profile
    fixed = {
        "municipality.csv": [{"municipality_code": b.code, "name": prof.name, "country": COUNTRY}],
        "providers.csv": [
            {
                "provider_id": p.provider_id,
                "name": p.name,
                "provider_type": p.provider_type,
                "accreditation_status": p.accreditation_status,
            }
            for p in b.providers
        ],
        "qualifications.csv": [
            {
                "qualification_id": q.qualification_id,
                "title": q.title,
                "isco_code": q.isco_code,
                "eqf_level": q.eqf_level,
            }
            for q in _QUALIFICATIONS
        ],
    }
    for name, rows in fixed.items():
        _write_csv(directory / name, _HEADERS[name], rows)
    for kind, (name, _) in _FILE_OF_KIND.items():
        _write_csv(directory / name, _HEADERS[name], [_row(r) for r in b.rows[kind]])


# --- entry point --------------------------------------------------------------------------------


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
    cutoff = _days(today, -EXPORT_LAG_DAYS)
    if not 2 <= municipalities <= 99:
        raise ValueError("municipalities must be between 2 and 99")
    if candidates_per_municipality < 200:
        raise ValueError("candidates_per_municipality must be at least 200")
    if (cutoff - START).days < 1000:
        raise ValueError(f"today must be after {_days(START, 1000 + EXPORT_LAG_DAYS)}")

    profiles = [_profile(i) for i in range(1, municipalities + 1)]
    gen = _Gen(seed, cutoff, tuple(p.code for p in profiles))
    bundles = [_Bundle(p, _providers(gen, p)) for p in profiles]

    scale = candidates_per_municipality * municipalities / 15000
    planted_later = [
        *_plant_duplicates(gen, bundles, max(2, round(40 * scale))),
        *_plant_shopping(gen, bundles, max(1, round(15 * scale))),
        *_plant_reciprocity(gen, bundles, max(1, round(5 * scale)), max(2, round(30 * scale))),
    ]
    for b in bundles:
        _fill(gen, b, candidates_per_municipality)
        _appeals(gen, b)
    for b in bundles:
        b.number()
    for b in bundles:  # origins are numbered only now, in their own bundle
        for cert in b.rows["CT"]:
            origin = cert.data["origin_certificate_no"]
            if isinstance(origin, _Rec):
                cert.data["origin_certificate_no"] = origin.data["certificate_no"]

    planted = [*_planted_rates(bundles)]
    planted += [PlantedAnomaly(k, m, p, g, describe()) for k, m, p, g, describe in planted_later]
    out_dir = Path(out_dir)
    paths = []
    for b in bundles:
        _write(b, out_dir / b.code)
        paths.append(out_dir / b.code)
    rate_planted = {p.municipality for p in planted if p.kind in _RATE_KINDS}
    return SyntheticFederation(
        bundles=tuple(paths),
        municipalities=tuple(b.code for b in bundles),
        planted=tuple(planted),
        clean_municipalities=tuple(b.code for b in bundles if b.code not in rate_planted),
    )


_RATE_KINDS = frozenset(
    {
        "employment_gap",
        "credential_inflation",
        "pass_rate_gap",
        "recognition_delay",
        "outcome_disparity",
    }
)


def _planted_rates(bundles: Sequence[_Bundle]) -> list[PlantedAnomaly]:
    out = []
    base = _BASELINE
    for b in bundles:
        prof, code = b.profile, b.code
        if prof.rates != base:
            out.append(
                PlantedAnomaly(
                    "employment_gap",
                    code,
                    None,
                    None,
                    f"employment {prof.rates.emp12:.2f} at 12 and {prof.rates.emp6:.2f} at 6 "
                    f"months against {base.emp12:.2f} and {base.emp6:.2f} elsewhere",
                )
            )
        mill = next((p for p in b.providers if p.rates is not None), None)
        if mill is not None:
            pid, r = mill.provider_id, mill.rates
            assert r is not None
            out += [
                PlantedAnomaly(
                    "credential_inflation",
                    code,
                    pid,
                    None,
                    f"{pid} ({_MILL_SHARE:.0%} of {code}'s trainees) passes {r.pass_first:.2f} "
                    f"at the first attempt but only {r.emp12:.2f} are employed at 12 months, "
                    f"{r.in_field:.2f} of them in their field",
                ),
                PlantedAnomaly(
                    "pass_rate_gap",
                    code,
                    pid,
                    None,
                    f"{pid} first-attempt pass rate {r.pass_first:.2f} against "
                    f"{base.pass_first:.2f} everywhere else",
                ),
                PlantedAnomaly(
                    "employment_gap",
                    code,
                    pid,
                    None,
                    f"{pid} employment {r.emp12:.2f} at 12 and {r.emp6:.2f} at 6 months "
                    f"(consequence of the diploma mill); {code} overall is about 0.71",
                ),
            ]
        if prof.slow_recognition:
            out.append(
                PlantedAnomaly(
                    "recognition_delay",
                    code,
                    None,
                    None,
                    f"decided recognition requests took a median of about 150 days, about 65% "
                    f"beyond 90 (elsewhere 60 and 10%); {prof.stuck_pending:.0%} stuck pending; "
                    f"{prof.request_share:.0%} of candidates request recognition",
                )
            )
        if prof.foreign_pass_first is not None:
            out.append(
                PlantedAnomaly(
                    "outcome_disparity",
                    code,
                    None,
                    "citizenship_group=foreign",
                    f"foreign citizens pass the first attempt at {prof.foreign_pass_first:.2f} "
                    f"against {prof.rates.pass_first:.2f} for nationals; foreign share "
                    f"{prof.foreign_share:.0%}; so {code}'s overall first-attempt pass rate is "
                    f"about 0.81 and more candidates appeal",
                )
            )
    return out
