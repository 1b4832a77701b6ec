"""Persons of the synthetic federation: names, citizenship, sex, dates of birth, national ids.

Why: identities must be unique across the whole federation (normalised name pair + date of
birth, and national id), so two bundles share a person exactly when the plan says so. `People`
draws every identity and remembers those in use; the name pools and the name normalisation
it relies on live here too.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import unicodedata
from dataclasses import dataclass

from fedaudit.synthetic.draws import days, draw_date, pick
from fedaudit.synthetic.params import COUNTRY, DOB_RANGE

__all__ = ["NAMES", "People", "Person", "norm", "strip_accents"]


@dataclass(frozen=True)
class Person:
    """One identity, as a registry would record it."""

    given: str
    family: str
    dob: dt.date
    sex: str
    citizenship: str | None
    national_id: str | None


# Name pools by origin: (male given names, female given names, family names "male/female").
NAMES: dict[str, tuple[str, str, str]] = {
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
_GROUPS = tuple(NAMES)
_POOLS = {g: tuple(tuple(pool.split()) for pool in pools) for g, pools in NAMES.items()}

_SPECIAL_LETTERS = str.maketrans({"ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i", "ß": "ss"})


@functools.lru_cache(maxsize=4096)
def strip_accents(text: str) -> str:
    """`text` without diacritics, special letters transliterated (Ł -> L, ß -> ss)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPECIAL_LETTERS))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@functools.lru_cache(maxsize=4096)
def norm(name: str) -> str:
    """The form identities are compared in: letters only, no accents, case-folded."""
    return "".join(ch for ch in strip_accents(name).casefold() if ch.isalpha())


class People:
    """Draws persons from the run's random stream; no two share an identity or national id."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._identities: set[tuple[str, str, dt.date]] = set()
        self._national_ids: set[str] = set()

    def draw(self, at: dt.date, foreign_share: float, *, adult: bool = False) -> Person:
        """A new person, at least 16 at `at`; `adult` draws an older one (24-55, mode 35)."""
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
        sex = pick(rng, (("female", 49), ("male", 49), ("other", 0.5), ("unknown", 1.5)))
        for _ in range(200):
            given, family = self._name(group, sex)
            dob = self._dob(at, adult)
            first, second = sorted((norm(given), norm(family)))
            if (first, second, dob) not in self._identities:
                self._identities.add((first, second, dob))
                break
        else:  # pragma: no cover - the pools hold millions of combinations
            raise RuntimeError("could not draw a unique identity")
        national_id = self._national_id(dob) if rng.random() < id_share else None
        return Person(given, family, dob, sex, citizenship, national_id)

    def _name(self, group: str, sex: str) -> tuple[str, str]:
        males, females, families = _POOLS[group]
        female = sex == "female" or (sex not in ("female", "male") and self.rng.random() < 0.5)
        given = self.rng.choice(females if female else males)
        forms = self.rng.choice(families).split("/")
        return given, forms[-1] if female else forms[0]

    def _dob(self, at: dt.date, adult: bool) -> dt.date:
        lo, hi = DOB_RANGE
        hi = min(hi, dt.date(at.year - 16, at.month, min(at.day, 28)))
        for _ in range(50):
            age = self.rng.triangular(24, 55, 35) if adult else self.rng.triangular(17, 40, 19)
            dob = days(at, -round(age * 365.25))
            if lo <= dob <= hi:
                return dob
        return draw_date(self.rng, lo, hi)

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
