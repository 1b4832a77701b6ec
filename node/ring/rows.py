"""A node's rows for a ring run: its registry read as ring inputs, then hashed to the group.

`load_persons` reads the registry (candidates, certificates, assessments) into the
local-merge inputs of `fedaudit.node.ring.keys`; `hashed_rows` turns the merged rows
into rows of group elements. Kept apart from the service so the sensitivity tests
build rows exactly as a node does, without a run, keys or a network.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence

from sqlalchemy import Engine, select

from fedaudit.common import ring_crypto as rc
from fedaudit.node.errors import DataUnavailableError
from fedaudit.node.ring.keys import (
    CertRow,
    Identity,
    PersonInput,
    PersonRow,
    cert_string,
    event_string,
    key_string,
)
from fedaudit.node.store.models import (
    Assessment,
    Candidate,
    Certificate,
    DataVersion,
    Municipality,
    Qualification,
)


def hashed_rows(
    run_id: str,
    people: Sequence[PersonRow],
    certs: Sequence[CertRow],
    *,
    token: Callable[[bytes], bytes] = rc.hash_to_group,
    blank: Callable[[], bytes] = rc.random_element,
) -> list[rc.Row]:
    """Rows of group elements: key strings hashed to the group, undefined slots random.

    `token` and `blank` are the group maps; the sensitivity tests pass clear-text
    stand-ins (equality is all counting looks at) to count many federations quickly.
    """
    rows: list[rc.Row] = []
    for p in people:
        tokens = [
            token(key_string(run_id, name, p.isco_code, value)) if value is not None else blank()
            for name, value in zip(p.key_names, p.keys, strict=True)
        ]
        flags = rc.FLAG_CERTIFIED if p.certified else 0
        if p.fail_months:
            flags |= rc.FLAG_FAILED
            for month in p.fail_months:
                # The slot of the row's own pass month is blank: otherwise the row would
                # show the coordinator an internal equality (pass inside its own window,
                # at which offset) that DP padding's dummy rows cannot reproduce.
                tokens.append(
                    token(event_string(run_id, p.isco_code, p.event_value, month))
                    if p.event_value and month != p.pass_month
                    else blank()
                )
        if p.pass_month is not None:
            flags |= rc.FLAG_PASSED
            tokens.append(
                token(event_string(run_id, p.isco_code, p.event_value, p.pass_month))
                if p.event_value
                else blank()
            )
        rows.append(rc.Row(rc.KIND_PERSON, p.isco_code, flags, tokens))
    for c in certs:
        t = token(cert_string(run_id, c.isco_code, c.municipality, c.certificate_no))
        rows.append(rc.Row(rc.KIND_CERT, c.isco_code, rc.FLAG_REVOKED if c.revoked else 0, [t]))
    return rows


def load_persons(engine: Engine) -> tuple[str, str, list[PersonInput]]:
    """The registry as ring inputs: (municipality code, data version, persons)."""
    with engine.connect() as conn:
        muni = conn.execute(select(Municipality.municipality_code)).scalar_one_or_none()
        version = conn.execute(
            select(DataVersion.version).order_by(DataVersion.id.desc()).limit(1)
        ).scalar_one_or_none()
        if muni is None or version is None:
            raise DataUnavailableError("no data bundle has been imported into this node yet")
        candidates = conn.execute(
            select(
                Candidate.candidate_id,
                Candidate.given_name,
                Candidate.family_name,
                Candidate.date_of_birth,
                Candidate.national_id,
            )
        ).all()
        certs = conn.execute(
            select(
                Certificate.candidate_id,
                Qualification.isco_code,
                Certificate.pathway,
                Certificate.status,
                Certificate.issued_on,
                Certificate.certificate_no,
                Certificate.origin_municipality,
                Certificate.origin_certificate_no,
            ).join(Qualification, Qualification.qualification_id == Certificate.qualification_id)
        ).all()
        assessments = conn.execute(
            select(
                Assessment.candidate_id,
                Qualification.isco_code,
                Assessment.result,
                Assessment.assessed_on,
            ).join(Qualification, Qualification.qualification_id == Assessment.qualification_id)
        ).all()
    certified: dict[str, dict[str, dt.date]] = defaultdict(dict)
    revoked: dict[str, list[tuple[str, str]]] = defaultdict(list)
    recognised: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for cid, isco, pathway, status, issued, number, origin, origin_no in certs:
        if pathway != "reciprocity":
            seen = certified[cid].get(isco)
            certified[cid][isco] = issued if seen is None else max(seen, issued)
        if status == "revoked":
            revoked[cid].append((isco, number))
        if pathway == "reciprocity" and status == "valid" and origin and origin_no:
            recognised[cid].append((isco, origin, origin_no))
    fails: dict[str, dict[str, list[dt.date]]] = defaultdict(lambda: defaultdict(list))
    passes: dict[str, dict[str, list[dt.date]]] = defaultdict(lambda: defaultdict(list))
    for cid, isco, result, day in assessments:
        if result == "fail":
            fails[cid][isco].append(day)
        elif result == "pass":
            passes[cid][isco].append(day)
    persons = [
        PersonInput(
            person_id=cid,
            identity=Identity.of(given, family, dob, nid),
            certified=certified.get(cid, {}),
            fails=fails.get(cid, {}),
            passes=passes.get(cid, {}),
            revoked=revoked.get(cid, ()),
            recognised=recognised.get(cid, ()),
        )
        for cid, given, family, dob, nid in candidates
    ]
    return muni, version, persons
