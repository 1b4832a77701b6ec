"""The in-memory registry of a run: providers, rows, one bundle per municipality, shared state.

Why: rows are drawn in plan order (planted persons first, then the local population) but a
registry numbers them chronologically; `Bundle` collects rows in any order and numbers them at
the end. `Run` is the state every step shares: the single random stream (whose draw order is
what makes a seed reproducible), the export cut-off, and the identities in use.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass

from fedaudit.synthetic.draws import days, draw_date
from fedaudit.synthetic.params import Profile, Qualification, Rates
from fedaudit.synthetic.people import People, Person

__all__ = ["KINDS", "Bundle", "Provider", "Rec", "Run"]

# Row kinds: candidates, assessments, certificates, recognition requests, appeals, outcomes.
KINDS = ("C", "A", "CT", "RR", "AP", "EO")


@dataclass(frozen=True)
class Provider:
    """A training provider; `rates` is set only for the planted diploma mill."""

    provider_id: str
    name: str
    provider_type: str
    accreditation_status: str
    weight: float
    offers: tuple[Qualification, ...]
    rates: Rates | None = None


@dataclass(eq=False, slots=True)
class Rec:
    """Any row: `first` and `seq` order the rows before ids are given, like a registry."""

    kind: str
    first: dt.date
    seq: int
    data: dict[str, object]
    id: str = ""


class Bundle:
    """The rows of one municipality, built in any order and numbered chronologically."""

    def __init__(self, profile: Profile, providers: tuple[Provider, ...]) -> None:
        self.profile = profile
        self.code = profile.code
        self.providers = providers
        self.rows: dict[str, list[Rec]] = {k: [] for k in KINDS}
        self._seq = 0

    def add(self, kind: str, first: dt.date, **data: object) -> Rec:
        """A new row of `kind`, dated `first` for numbering; other rows may be values."""
        self._seq += 1
        rec = Rec(kind, first, self._seq, data)
        self.rows[kind].append(rec)
        return rec

    def number(self) -> None:
        """Give every row its id, and certificates their per-year certificate_no."""
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


class Run:
    """Shared state of one run: the random stream, the cut-off, identities in use."""

    def __init__(self, seed: int, cutoff: dt.date, codes: tuple[str, ...]) -> None:
        self.rng = random.Random(f"fedaudit-synthetic:{seed}")
        self.cutoff = cutoff
        self.codes = codes
        self.last_assessment = days(cutoff, -45)  # leaves room to issue the certificate
        self.people = People(self.rng)

    def date(self, lo: dt.date, hi: dt.date) -> dt.date:
        """A uniform date in [lo, hi]."""
        return draw_date(self.rng, lo, hi)

    def person(self, at: dt.date, foreign_share: float, *, adult: bool = False) -> Person:
        """A new person with an identity unique in the federation (see `People.draw`)."""
        return self.people.draw(at, foreign_share, adult=adult)
