"""The local population of one municipality: its providers, trainees, requesters and appeals.

Why: this is the clean background each planted case hides in. Providers are drawn first (the
planted diploma mill among them), the planted persons are added next (anomalies.py), and then
`fill` tops the bundle up with ordinary trainees and recognition requesters, and `appeals`
lodges appeals against what all of them went through.
"""

from __future__ import annotations

import datetime as dt

from fedaudit.synthetic import events
from fedaudit.synthetic.draws import days, pick
from fedaudit.synthetic.params import (
    APPEAL_OUTCOMES,
    DECISIONS,
    MILL,
    MILL_SHARE,
    PRIOR_LEARNING_SHARE,
    QUALIFICATIONS,
    START,
    Profile,
    Qualification,
    Rates,
)
from fedaudit.synthetic.people import NAMES
from fedaudit.synthetic.records import Bundle, Provider, Rec, Run

__all__ = ["appeals", "fill", "providers"]


def providers(run: Run, prof: Profile) -> tuple[Provider, ...]:
    """4-6 providers: a vocational school, the chamber (offers everything), then others."""
    rng, town, code = run.rng, prof.town, prof.code
    quals, weights = QUALIFICATIONS, [q.weight for q in QUALIFICATIONS]

    def offers(n: int) -> tuple[Qualification, ...]:
        chosen: list[Qualification] = []
        while len(chosen) < n:
            q = rng.choices(quals, weights)[0]
            if q not in chosen:
                chosen.append(q)
        return tuple(q for q in quals if q in chosen)

    family = rng.choice(NAMES["at"][2].split())
    others = {
        "company": (f"Stadtwerke {town} Lehrwerkstatt", f"Autohaus {family} GmbH"),
        "private": (f"BFI {town}", f"WIFI {town}"),
        "public_service": (f"AMS Ausbildungszentrum {town}",),
    }
    specs: list[tuple[str, str, float, tuple[Qualification, ...], Rates | None]] = [
        ("school", f"Landesberufsschule {town}", 0.35, offers(9), None),
        ("chamber", f"Lehrlingsstelle der Wirtschaftskammer {town}", 0.20, quals, None),
    ]
    kinds = ["company", "public_service", "private", "company"]
    count = 5 if prof.mill else rng.randint(4, 6)
    for i in range(2, count):
        if prof.mill and i == 3:
            mill = ("private", f"Kompetenzakademie {town} GmbH", 0.0, offers(5), MILL)
            specs.append(mill)
            continue
        kind = kinds[i - 2] if not prof.mill else ("company", "private", "public_service")[i - 2]
        name = rng.choice(others[kind])
        if any(s[1] == name for s in specs):
            name = f"{name} Ost"
        n = {"company": 3, "private": 5, "public_service": 5}[kind]
        specs.append((kind, name, rng.uniform(0.08, 0.2), offers(n), None))
    total = sum(s[2] for s in specs)
    scale = (1 - MILL_SHARE) / total if prof.mill else 1 / total
    out = []
    for i, (kind, name, weight, offered, rates) in enumerate(specs, 1):
        status = "conditional" if i >= 3 and rates is None and rng.random() < 0.15 else "accredited"
        w = MILL_SHARE if rates is not None else weight * scale
        out.append(Provider(f"{code}-P{i}", name, kind, status, w, offered, rates))
    return tuple(out)


def fill(run: Run, b: Bundle, total: int) -> None:
    """Trainees and recognition requesters up to `total` candidate rows."""
    rng, prof = run.rng, b.profile
    requesters = round(prof.request_share * total)
    trainees = total - requesters - len(b.rows["C"])
    if trainees < 0:
        raise ValueError("candidates_per_municipality is too small for the planted persons")
    weights = [p.weight for p in b.providers]
    for _ in range(trainees):
        prov = rng.choices(b.providers, weights)[0]
        qual = events.draw_qualification(run, prov.offers)
        on = run.date(START, days(run.cutoff, -60))
        prior = rng.random() < PRIOR_LEARNING_SHARE
        cand = events.candidate(b, run.person(on, prof.foreign_share, adult=prior), on)
        last = events.sit(run, b, cand, qual, prov, on=on)[-1]
        if last.data["result"] == "pass":
            issued = days(last.first, rng.randint(7, 45))
            pathway = "prior_learning" if prior else "training"
            events.certify(run, b, cand, qual, prov, pathway=pathway, issued=issued)
    others = [code for code in run.codes if code != b.code]
    for _ in range(requesters):
        # A stuck file is overdue but not forgotten: it arrived within the last 18 months.
        stuck = rng.random() < prof.stuck_pending
        received = run.date(days(run.cutoff, -540) if stuck else START, run.cutoff)
        cand = events.candidate(b, run.person(received, prof.foreign_share, adult=True), received)
        decided: dt.date | None = days(received, events.decision_days(run, b))
        if stuck or decided > run.cutoff:  # type: ignore[operator]
            decided = None
        b.add(
            "RR",
            received,
            candidate_id=cand,
            qualification_id=events.draw_qualification(run).qualification_id,
            origin_municipality=rng.choice(others),
            received_on=received,
            decided_on=decided,
            decision="pending" if decided is None else pick(rng, DECISIONS),
        )


def appeals(run: Run, b: Bundle) -> None:
    """Appeals against `b`'s assessments, revoked or suspended certificates and decisions."""
    rng = run.rng
    subjects: list[tuple[str, Rec, dt.date, float]] = []
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
        lodged = days(when, rng.randint(5, 30))
        if lodged > run.cutoff:
            continue
        outcome = pick(rng, APPEAL_OUTCOMES)
        slow = rng.random() < 0.1
        decided: dt.date | None = days(
            lodged, rng.randint(120, 400) if slow else rng.randint(20, 120)
        )
        if decided > run.cutoff:  # type: ignore[operator]
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
