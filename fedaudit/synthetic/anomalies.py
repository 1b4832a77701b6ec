"""The planted anomalies: persons planted across municipalities, and the ground-truth list.

Why: the audits are trusted only if shown to find what was planted and nothing else. The
`plant_*` functions add the cross-municipality cases to the bundles before the local
population is drawn, and return each case with a description to be written once rows are
numbered; `planted_rates` lists the rate anomalies the profiles in params.py carry. A
`PlantedAnomaly.kind` is a report.json finding kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedaudit.synthetic import events
from fedaudit.synthetic.draws import days
from fedaudit.synthetic.params import BASELINE, MILL_SHARE, QUALIFICATIONS, START
from fedaudit.synthetic.people import Person, strip_accents
from fedaudit.synthetic.records import Bundle, Rec, Run

__all__ = [
    "RATE_KINDS",
    "Planted",
    "PlantedAnomaly",
    "plant_duplicates",
    "plant_reciprocity",
    "plant_shopping",
    "planted_rates",
]


@dataclass(frozen=True)
class PlantedAnomaly:
    """One anomaly the audits should find; `kind` is a report.json finding kind."""

    kind: str
    municipality: str
    provider_id: str | None
    group: str | None
    description: str


# A planted case before numbering: kind, municipality, provider, group, and a description
# to be called once certificate numbers exist.
Planted = tuple[str, str, str | None, str | None, Callable[[], str]]


def plant_duplicates(run: Run, bundles: list[Bundle], n: int) -> list[Planted]:
    """`n` persons certified for the same qualification in two municipalities."""
    rng, out = run.rng, []
    variants = ["accent_dropped", "case_changed", "names_swapped"]
    for i in range(n):
        a, b = rng.sample(bundles, 2)
        qual = events.draw_qualification(run)
        first_a = run.date(START, days(run.cutoff, -760))
        person = run.person(first_a, a.profile.foreign_share)
        variant = None
        if i % 7 == 3 and person.national_id:  # a few name variants, always with an id
            accented = strip_accents(person.given + person.family) != person.given + person.family
            variant = "accent_dropped" if accented else variants[1 + (i // 7) % 2]
        ca = events.candidate(a, person, first_a)
        cert_a = events.pass_and_certify(run, a, ca, qual, on=first_a, pathway="training")
        first_b = min(run.last_assessment, days(cert_a.first, rng.randint(120, 720)))
        pathway = "prior_learning" if rng.random() < 0.5 else "training"
        cb = events.candidate(b, person, first_b, variant=variant)
        cert_b = events.pass_and_certify(run, b, cb, qual, on=first_b, pathway=pathway)
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


def plant_shopping(run: Run, bundles: list[Bundle], n: int) -> list[Planted]:
    """`n` persons who fail in one municipality and pass the same qualification in another."""
    rng, out = run.rng, []
    for _ in range(n):
        a, b = rng.sample(bundles, 2)
        mill = next((p for p in b.providers if p.rates is not None), None)
        to_mill = mill is not None and rng.random() < 0.7
        qual = events.draw_qualification(run, mill.offers if to_mill and mill else QUALIFICATIONS)
        first_a = run.date(START, days(run.cutoff, -560))
        ca = events.candidate(a, run.person(first_a, a.profile.foreign_share), first_a)
        forced = ("fail", "fail") if rng.random() < 0.4 else ("fail",)
        fails = events.sit(
            run, a, ca, qual, events.pick_provider(run, a, qual), on=first_a, forced=forced
        )
        last_fail, failed = fails[-1].first, len(fails)
        on = days(last_fail, rng.randint(45, 300))
        cb = events.candidate(b, person_of(ca), on)
        prov = mill if to_mill and mill else events.pick_provider(run, b, qual)
        events.sit(run, b, cb, qual, prov, on=on, forced=("pass",))
        issued = days(on, rng.randint(7, 40))
        cert = events.certify(run, b, cb, qual, prov, pathway="training", issued=issued)
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


def person_of(cand: Rec) -> Person:
    """The person behind a candidate row (to enter them in a second bundle)."""
    d = cand.data
    return Person(
        str(d["given_name"]),
        str(d["family_name"]),
        d["date_of_birth"],  # type: ignore[arg-type]
        str(d["sex"]),
        d["citizenship"],  # type: ignore[arg-type]
        d["national_id"],  # type: ignore[arg-type]
    )


def plant_reciprocity(
    run: Run, bundles: list[Bundle], revoked: int, legitimate: int
) -> list[Planted]:
    """Reciprocity certificates; the origins of the first `revoked` are revoked later."""
    rng, out = run.rng, []
    lasting = [q for q in QUALIFICATIONS if q.validity_years is None]
    for i in range(revoked + legitimate):
        a, b = rng.sample(bundles, 2)
        qual = events.draw_qualification(run, lasting)
        first_a = run.date(START, days(run.cutoff, -800))
        ca = events.candidate(a, run.person(first_a, a.profile.foreign_share), first_a)
        prov = events.pick_provider(run, a, qual)
        events.sit(run, a, ca, qual, prov, on=first_a, forced=("pass",))
        origin = events.certify(
            run,
            a,
            ca,
            qual,
            prov,
            pathway="training",
            issued=days(first_a, rng.randint(7, 45)),
            keep_valid=True,
        )
        received = days(origin.first, rng.randint(30, 400))
        for _ in range(20):
            decided = days(received, events.decision_days(run, b))
            if decided <= days(run.cutoff, -30):
                break
        else:
            decided = days(run.cutoff, -30)
        cb = events.candidate(b, person_of(ca), received)
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
        cert = events.certify(
            run,
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
            origin.data["status_changed_on"] = days(
                decided, rng.randint(20, min(365, (run.cutoff - decided).days))
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


RATE_KINDS = frozenset(
    {
        "employment_gap",
        "credential_inflation",
        "pass_rate_gap",
        "recognition_delay",
        "outcome_disparity",
    }
)


def planted_rates(bundles: Sequence[Bundle]) -> list[PlantedAnomaly]:
    """The rate anomalies planted through the municipalities' profiles and providers."""
    out = []
    base = BASELINE
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
                    f"{pid} ({MILL_SHARE:.0%} of {code}'s trainees) passes {r.pass_first:.2f} "
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
