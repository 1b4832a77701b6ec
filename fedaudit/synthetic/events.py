"""Registry events for one person: candidate row, assessments, certificate, employment outcomes.

Why: the clean population and the planted persons go through the same steps, drawn the same
way, so a planted case differs from the rest only where the plan forces it. Each step draws
from the run's one random stream in a fixed order; changing that order changes every file.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import replace

from fedaudit.synthetic.draws import add_months, days, pick
from fedaudit.synthetic.params import (
    COUNTRY,
    NOT_EMPLOYED,
    OUTCOME_COVERAGE,
    QUALIFICATIONS,
    RETAKE_SHARE,
    SEX_EMPLOYMENT_SHIFT,
    SLOW_MEDIAN_DAYS,
    STAY_EMPLOYED,
    Qualification,
    Rates,
)
from fedaudit.synthetic.people import Person, strip_accents
from fedaudit.synthetic.records import Bundle, Provider, Rec, Run

__all__ = [
    "candidate",
    "certify",
    "decision_days",
    "draw_qualification",
    "pass_and_certify",
    "pick_provider",
    "rates_for",
    "sit",
]


def candidate(b: Bundle, p: Person, first: dt.date, *, variant: str | None = None) -> Rec:
    """`p`'s candidate row in `b`, optionally under a name variant (no random draw)."""
    given, family, nid = p.given, p.family, p.national_id
    if variant == "accent_dropped":
        given, family = strip_accents(given), strip_accents(family)
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


def rates_for(b: Bundle, prov: Provider, cand: Rec) -> Rates:
    """The rates `cand` draws from: the provider's (mill), else the municipality's."""
    rates = prov.rates or b.profile.rates
    cit = cand.data["citizenship"]
    if b.profile.foreign_pass_first is not None and cit not in (None, COUNTRY):
        rates = replace(rates, pass_first=b.profile.foreign_pass_first)
    return rates


def sit(
    run: Run,
    b: Bundle,
    cand: Rec,
    qual: Qualification,
    prov: Provider,
    *,
    on: dt.date,
    forced: Sequence[str] | None = None,
) -> list[Rec]:
    """Assessment attempts until a pass, three attempts, or the candidate gives up."""
    rng, rates, out = run.rng, rates_for(b, prov, cand), []
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
        if result == "pass" or done or (forced is None and rng.random() > RETAKE_SHARE):
            break
        on = days(on, rng.randint(60, 180))
        if on > run.last_assessment:
            break
    return out


def certify(
    run: Run,
    b: Bundle,
    cand: Rec,
    qual: Qualification,
    prov: Provider | None,
    *,
    pathway: str,
    issued: dt.date,
    origin: tuple[str, Rec] | None = None,
    keep_valid: bool = False,
) -> Rec:
    """A certificate (with its later status) and, if trained by `prov`, employment outcomes."""
    rng, status, changed = run.rng, "valid", None
    if not keep_valid:
        expiry = add_months(issued, 12 * qual.validity_years) if qual.validity_years else None
        u = rng.random()
        if expiry is not None and expiry <= run.cutoff and rng.random() < 0.7:
            status, changed = "expired", expiry
        elif u < 0.008:
            changed = days(issued, rng.randint(30, 700))
            if changed <= run.cutoff:
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
        _outcomes(run, b, cand, cert, rates=rates_for(b, prov, cand), issued=issued)
    return cert


def _outcomes(run: Run, b: Bundle, cand: Rec, cert: Rec, *, rates: Rates, issued: dt.date) -> None:
    """Employment at 6 and 12 months after `issued`, for the horizons already passed."""
    rng = run.rng
    shift = SEX_EMPLOYMENT_SHIFT.get(str(cand.data["sex"]), 0.0)
    p6, p12 = rates.emp6 + shift, rates.emp12 + shift
    employed6 = rng.random() < p6
    p12_given = STAY_EMPLOYED if employed6 else (p12 - STAY_EMPLOYED * p6) / (1 - p6)
    employed12 = rng.random() < p12_given
    in_field = rng.random() < rates.in_field
    earnings = 2300 * math.exp(rng.gauss(0, 0.35))
    for months, employed, growth in ((6, employed6, 1.0), (12, employed12, 1.03)):
        observed = add_months(issued, months)
        if observed > run.cutoff or rng.random() > OUTCOME_COVERAGE:
            continue
        if employed:
            status = "self_employed" if rng.random() < 0.08 else "employed"
            missing = 0.30 if status == "self_employed" else 0.08
            pay = None if rng.random() < missing else round(earnings * growth)
            field: bool | None = in_field
        else:
            status, pay, field = pick(rng, NOT_EMPLOYED), None, None
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


def decision_days(run: Run, b: Bundle) -> int:
    """Days a recognition decision takes in `b` (exponential in the planted slow office)."""
    if b.profile.slow_recognition:
        return min(900, max(5, round(run.rng.expovariate(math.log(2) / SLOW_MEDIAN_DAYS))))
    return max(5, round(run.rng.lognormvariate(math.log(60), 0.316)))


def pick_provider(run: Run, b: Bundle, qual: Qualification) -> Provider:
    """A provider of `b` offering `qual`, by weight."""
    offering = [p for p in b.providers if qual in p.offers]
    return run.rng.choices(offering, [p.weight for p in offering])[0]


def draw_qualification(run: Run, pool: Sequence[Qualification] = QUALIFICATIONS) -> Qualification:
    """A qualification of `pool`, by weight."""
    return run.rng.choices(pool, [q.weight for q in pool])[0]


def pass_and_certify(
    run: Run, b: Bundle, cand: Rec, qual: Qualification, *, on: dt.date, pathway: str
) -> Rec:
    """One forced pass at a drawn provider, then the certificate 7-45 days later."""
    prov = pick_provider(run, b, qual)
    sit(run, b, cand, qual, prov, on=on, forced=("pass",))
    issued = days(on, run.rng.randint(7, 45))
    return certify(run, b, cand, qual, prov, pathway=pathway, issued=issued)
