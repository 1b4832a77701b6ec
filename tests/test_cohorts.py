"""Cohort accounting at a real node: import assigns cohorts, queries are charged per cohort.

Runs the importer on the fixture bundle (and edited copies of it: a new month, a
backdated record, a corrected old record) into real SQLite and PostgreSQL databases,
and `NodeService` on top, as `node serve` does; the wire field is checked over gRPC.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.node.domain import QuerySpec
from fedaudit.node.errors import BudgetExhaustedError
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import Policy, parse_policy
from fedaudit.node.query import catalogue
from fedaudit.node.query.service import NodeService
from fedaudit.node.server import start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import CohortDigest, DataVersion, PersonCohort

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
SEPT = dt.datetime(2025, 9, 15, 10, 0, tzinfo=dt.UTC)
OCT = dt.datetime(2025, 10, 20, 10, 0, tzinfo=dt.UTC)
BOARD = "board"
COHORTS = {  # the month of each person's earliest record in the fixture bundle
    "C01": "2022-06",
    "C02": "2022-06",
    "C03": "2023-03",
    "C04": "2023-05",
    "C05": "2022-11",
    "C06": "2023-09",
    "C07": "2024-02",
    "C08": "2024-04",
    "C09": "2024-06",
    "C10": "2022-05",
}


def _policy(
    node_total: float = 5.0, first_cohort: str = "2022-01", open_months: int = 13
) -> Policy:
    return parse_policy(
        {
            "version": 1,
            "requesters": {BOARD: {"rho_per_period": 100.0, "node_share": node_total}},
            "budget": {
                "period": "year",
                "node_rho_total": node_total,
                "max_rho_per_request": min(1.0, node_total),
            },
            "reliability": {"suppress_below": 0},
            "periods": {"first": 2022, "last": 2025},
            "cohorts": {"first": first_cohort, "open_months": open_months},
        },
        source="<cohort test policy>",
    )


@pytest.fixture(name="engine")
def _engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _edited(tmp_path: Path, name: str, edits: dict[str, list[dict[str, str]]]) -> Path:
    """A copy of the fixture bundle with rows replaced (same id) or added, per file."""
    bundle = tmp_path / name
    shutil.copytree(FIXTURE_BUNDLE, bundle)
    for file, changes in edits.items():
        path = bundle / file
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or ())
            rows = list(reader)
        key = fields[0]
        by_id = {row[key]: row for row in rows}
        for change in changes:
            if change[key] in by_id:
                by_id[change[key]].update(change)
            else:
                rows.append({name: change.get(name, "") for name in fields})
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return bundle


NEW_MONTH = {  # a person first assessed in October 2025, and one with no dated record yet
    "candidates.csv": [
        {
            "candidate_id": "C11",
            "family_name": "Neu",
            "given_name": "Nora",
            "date_of_birth": "2004-02-02",
            "sex": "female",
            "citizenship": "AT",
            "national_id": "AT-2004-0011",
        },
        {
            "candidate_id": "C12",
            "family_name": "Leer",
            "given_name": "Lea",
            "date_of_birth": "2005-03-03",
            "sex": "female",
            "citizenship": "AT",
            "national_id": "AT-2005-0012",
        },
    ],
    "assessments.csv": [
        {
            "assessment_id": "A12",
            "candidate_id": "C11",
            "qualification_id": "Q-COOK",
            "provider_id": "P02",
            "attempt_no": "1",
            "assessed_on": "2025-10-03",
            "result": "pass",
        }
    ],
}


def _spec(rho: float = 0.1, *, cohorts: tuple[str, ...] | None = None, **kw: object) -> QuerySpec:
    filters = {"cohort": cohorts} if cohorts is not None else {}
    return QuerySpec("assessment_results", filters=filters, rho=rho, **kw)  # type: ignore[arg-type]


def _service(engine: Engine, policy: Policy, now: dt.datetime) -> NodeService:
    return NodeService(engine, policy, clock=lambda: now)


def _spent(service: NodeService, *cohorts: str) -> dict[str, float]:
    return {c: round(v, 9) for c, v in service.ledger.spent_by_cohort(cohorts).items()}


def test_import_fixes_each_persons_cohort_and_later_imports_do_not_move_it(
    engine: Engine, tmp_path: Path
) -> None:
    """Cohort = month of the earliest record, clamped to the reference month, written at the
    first import; a later bundle that backdates a person's records leaves them where they were."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    with engine.connect() as conn:
        first = dict(conn.execute(select(PersonCohort.candidate_id, PersonCohort.cohort)).all())
    assert first == COHORTS
    backdated = _edited(
        tmp_path,
        "backdated",
        {
            **NEW_MONTH,
            "assessments.csv": [
                *NEW_MONTH["assessments.csv"],
                {"assessment_id": "A10", "assessed_on": "2021-01-05"},  # C09, was 2024-06-03
            ],
        },
    )
    result = import_bundle(engine, backdated, now=OCT)
    with engine.connect() as conn:
        rows = conn.execute(
            select(PersonCohort.candidate_id, PersonCohort.cohort, PersonCohort.data_version)
        ).all()
    after = {c: cohort for c, cohort, _ in rows}
    assert after == {**COHORTS, "C11": "2025-10", "C12": "2025-10"}  # C12: no record yet
    assert {c for c, _, v in rows if v == result.data_version} == {"C11", "C12"}


def test_cohort_dimension_keys_run_to_the_newest_reference_month(engine: Engine) -> None:
    """Keys: from the policy's first cohort to the import's month, for every template."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    caps = _service(engine, _policy(), SEPT).capabilities(BOARD)
    keys = caps.dimensions["cohort"]
    assert keys[0] == "2022-01"
    assert keys[-1] == "2025-09"
    assert len(keys) == 45
    assert all("cohort" in t.dimensions for t in caps.templates)


def test_a_query_over_all_cohorts_charges_every_cohort(engine: Engine) -> None:
    """No cohort filter: every cohort up to the newest is charged, and those before the first
    key too; the charge is one entry whatever the number of cohorts."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    service = _service(engine, _policy(), SEPT)
    service.query(BOARD, "all-1", _spec(0.1))
    spent = _spent(service, "1990-01", "2022-01", "2023-03", "2024-12", "2025-09")
    assert spent == dict.fromkeys(spent, 0.1)
    # A filter naming every key is the same question, charged the same way.
    keys = service.capabilities(BOARD).dimensions["cohort"]
    service.query(BOARD, "all-2", _spec(0.2, cohorts=keys, group_by=("sex",)))
    assert _spent(service, "1990-01", "2025-09") == {"1990-01": 0.3, "2025-09": 0.3}


def test_a_cohort_restricted_query_charges_no_other_cohort(engine: Engine) -> None:
    """A query about two cohorts charges exactly those two; the count it answers covers
    exactly their persons (checked on the true counts)."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    policy = _policy()
    service = _service(engine, policy, SEPT)
    service.query(BOARD, "two", _spec(0.25, cohorts=("2023-03", "2024-02")))
    keys = service.capabilities(BOARD).dimensions["cohort"]
    spent = _spent(service, "1990-01", *keys)
    charged = {c for c, v in spent.items() if v}
    assert charged == {"2023-03", "2024-02"}
    assert spent["2023-03"] == spent["2024-02"] == 0.25
    # True counts: C03 (one pass in 2023-03) and C07 (two fails; K = 1 keeps the first).
    spec = _spec(cohorts=("2023-03", "2024-02"), group_by=("cohort",))
    with engine.connect() as conn:
        keys = catalogue.dimension_keys(conn, policy.periods, policy.cohort_start)
        template, params = catalogue.validate(spec, keys)
        counts = catalogue.true_counts(
            conn, template, spec, keys, params, max_records_per_person=1, reference_date=SEPT.date()
        )
    assert {(g, c): n for g, c, n in counts if n} == {
        (("2023-03",), "pass"): 1,
        (("2024-02",), "fail"): 1,
    }


def test_the_first_key_holds_the_earlier_months_and_is_charged_for_them(engine: Engine) -> None:
    """With cohorts starting 2022-07, persons of 2022-05 and 2022-06 count under 2022-07,
    and a query about 2022-07 is charged to them too."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    policy = _policy(first_cohort="2022-07")
    service = _service(engine, policy, SEPT)
    service.query(BOARD, "first", _spec(0.125, cohorts=("2022-07",)))
    assert _spent(service, "2022-05", "2022-06", "2022-07", "2022-08") == {
        "2022-05": 0.125,
        "2022-06": 0.125,
        "2022-07": 0.125,
        "2022-08": 0.0,
    }
    spec = _spec(cohorts=("2022-07",), group_by=("cohort",))
    with engine.connect() as conn:
        keys = catalogue.dimension_keys(conn, policy.periods, policy.cohort_start)
        template, params = catalogue.validate(spec, keys)
        counts = catalogue.true_counts(
            conn, template, spec, keys, params, max_records_per_person=5, reference_date=SEPT.date()
        )
    # C01 (pass), C02 (fail, pass), C10 has no assessment.
    assert {c: n for _, c, n in counts if n} == {"pass": 2, "fail": 1}


def test_a_new_month_leaves_old_cohort_replays_free(engine: Engine, tmp_path: Path) -> None:
    """After importing a new month, questions about old cohorts replay at no charge; the
    question over all cohorts (which now reads the new month) and the new cohort's are new."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    policy = _policy()
    before = _service(engine, policy, SEPT)
    old = before.query(BOARD, "old-1", _spec(0.1, cohorts=("2023-03",)))
    before.query(BOARD, "all-1", _spec(0.1))
    import_bundle(engine, _edited(tmp_path, "october", NEW_MONTH), now=OCT)
    after = _service(engine, policy, OCT)
    assert after.preflight(BOARD, _spec(0.1, cohorts=("2023-03",)), "old-2").replay
    replay = after.query(BOARD, "old-2", _spec(0.1, cohorts=("2023-03",)))
    assert replay.replayed
    assert replay.cells == old.cells
    assert not after.preflight(BOARD, _spec(0.1), "all-2").replay
    assert not after.query(BOARD, "all-2", _spec(0.1)).replayed
    new = after.query(BOARD, "new-1", _spec(0.1, cohorts=("2025-10",)))
    assert not new.replayed
    assert _spent(after, "2023-03", "2024-02", "2025-10") == {
        "2023-03": 0.3,  # old-1, all-1 and all-2; old-2 was free
        "2024-02": 0.2,
        "2025-10": 0.2,  # all-2 and new-1
    }


def test_corrected_old_cohort_data_is_charged_to_that_cohort_only(
    engine: Engine, tmp_path: Path
) -> None:
    """A re-import that corrects a record of a 2023-03 person, declared with --reopen, makes
    questions about 2023-03 new (charged to 2023-03 only); other cohorts' still replay."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    policy = _policy()
    before = _service(engine, policy, SEPT)
    before.query(BOARD, "mar-1", _spec(0.1, cohorts=("2023-03",)))
    before.query(BOARD, "feb-1", _spec(0.1, cohorts=("2024-02",)))
    corrected = _edited(
        tmp_path, "corrected", {"assessments.csv": [{"assessment_id": "A04", "result": "fail"}]}
    )
    result = import_bundle(engine, corrected, now=SEPT + dt.timedelta(days=1), reopen=["2023-03"])
    assert result.changed_cohorts == ("2023-03",)
    assert result.reopened_cohorts == ("2023-03",)
    after = _service(engine, policy, SEPT + dt.timedelta(days=1))
    spent_before = _spent(after, "2023-03", "2024-02", "2023-05")
    mar = after.query(BOARD, "mar-2", _spec(0.1, cohorts=("2023-03",)))
    feb = after.query(BOARD, "feb-2", _spec(0.1, cohorts=("2024-02",)))
    assert not mar.replayed
    assert feb.replayed
    assert _spent(after, "2023-03", "2024-02", "2023-05") == {
        "2023-03": round(spent_before["2023-03"] + 0.1, 9),
        "2024-02": spent_before["2024-02"],
        "2023-05": spent_before["2023-05"],
    }


def test_whether_a_cohorts_data_changed_is_not_revealed_by_replays(
    engine: Engine, tmp_path: Path
) -> None:
    """Attack: a requester polls free preflights to learn whether anything about the persons
    of a small cohort changed between imports. Replay depends on public facts only: a closed
    cohort's question replays whether its data changed or not (the officer is told locally),
    an open cohort's is new after every import, changed or not."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    policy = _policy(open_months=16)  # at 2025-09: 2024-06 (C09) open, 2024-04 (C08) closed
    _service(engine, policy, SEPT).query(BOARD, "closed-1", _spec(0.1, cohorts=("2024-04",)))
    _service(engine, policy, SEPT).query(BOARD, "open-1", _spec(0.1, cohorts=("2024-06",)))
    day = SEPT + dt.timedelta(days=1)
    changed = _edited(  # C08's assessment corrected, C09's untouched
        tmp_path, "changed", {"assessments.csv": [{"assessment_id": "A09", "result": "fail"}]}
    )
    seen = []
    for name, bundle in (("unchanged", FIXTURE_BUNDLE), ("changed", changed)):
        result = import_bundle(engine, bundle, now=day)
        service = _service(engine, policy, day)
        seen.append(
            (
                name,
                service.preflight(BOARD, _spec(0.1, cohorts=("2024-04",)), "").replay,
                service.preflight(BOARD, _spec(0.1, cohorts=("2024-06",)), "").replay,
                result.changed_cohorts,
            )
        )
    assert seen == [
        ("unchanged", True, False, ()),
        ("changed", True, False, ("2024-04",)),  # only the officer learns what changed
    ]


def test_reopen_must_name_months_the_node_has_seen(engine: Engine, tmp_path: Path) -> None:
    """--reopen takes months up to the import's own; anything else is refused, nothing written."""
    from fedaudit.node.errors import BundleError

    for bad in ("2023-3", "2025-10", "all"):
        with pytest.raises(BundleError, match="--reopen"):
            import_bundle(engine, FIXTURE_BUNDLE, now=SEPT, reopen=[bad])
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    with engine.connect() as conn:
        versions = conn.execute(select(DataVersion.version)).scalars().all()
    assert len(versions) == 1


def test_caps_bind_per_cohort_and_preflight_names_the_binding_cohort(engine: Engine) -> None:
    """With a node cap of 0.5, one cohort can be spent out while the others keep theirs;
    a preflight reports the cohort that binds, a refusal names it."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    service = _service(engine, _policy(node_total=0.5), SEPT)
    service.query(BOARD, "mar", _spec(0.5, cohorts=("2023-03",)))
    pre = service.preflight(BOARD, _spec(0.1, cohorts=("2023-03", "2024-02")))
    assert not pre.fits_budget
    assert pre.budget.cohort == "2023-03"
    assert pre.budget.node_rho_remaining == 0.0
    with pytest.raises(BudgetExhaustedError, match="cohort 2023-03") as info:
        service.query(BOARD, "both", _spec(0.1, cohorts=("2023-03", "2024-02")))
    assert info.value.details["cohort"] == "2023-03"
    pre = service.preflight(BOARD, _spec(0.5, cohorts=("2024-02",)))
    assert pre.fits_budget
    assert pre.budget.node_rho_remaining == 0.5
    service.query(BOARD, "feb", _spec(0.5, cohorts=("2024-02",)))
    # Nothing over all cohorts fits any more: 2023-03 and 2024-02 are both spent out.
    assert not service.preflight(BOARD, _spec(0.1)).fits_budget


def test_the_binding_cohort_travels_over_grpc(engine: Engine) -> None:
    """Preflight over gRPC carries Budget.cohort (the coordinator's transport reads it)."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    service = _service(engine, _policy(node_total=1.0), SEPT)
    service.query(BOARD, "mar", _spec(0.75, cohorts=("2023-03",)))
    running = start_node_server(service, host="127.0.0.1", port=0)
    transport = GrpcNodeTransport("T01", f"127.0.0.1:{running.port}", requester=BOARD)
    try:
        pre = transport.preflight(_spec(0.1, cohorts=("2023-03", "2024-02")), "", timeout=10)
        assert pre.budget.cohort == "2023-03"
        assert pre.budget.node_rho_remaining == pytest.approx(0.25)
        pre = transport.preflight(_spec(0.1, cohorts=("2024-02",)), "", timeout=10)
        assert pre.budget.cohort == "2024-02"
        assert pre.budget.node_rho_remaining == pytest.approx(1.0)
    finally:
        transport.close()
        running.stop(grace=None)


def test_import_command_reopens_and_tells_the_officer_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`node import --reopen`: a bad month exits 2 and writes nothing; a changed cohort not
    reopened is named in a local note; a reopened one is confirmed."""
    from fedaudit.cli.main import main

    db = tmp_path / "node.db"
    assert main(["node", "import", str(FIXTURE_BUNDLE), "--db", str(db), "--reopen", "2023-3"]) == 2
    assert "'2023-3' is not a month as YYYY-MM" in capsys.readouterr().err
    assert not db.exists()
    assert main(["node", "import", str(FIXTURE_BUNDLE), "--db", str(db)]) == 0
    corrected = _edited(
        tmp_path, "corrected", {"assessments.csv": [{"assessment_id": "A04", "result": "fail"}]}
    )
    capsys.readouterr()
    assert main(["node", "import", str(corrected), "--db", str(db)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "data changed in cohort(s) 2023-03" in out
    assert "--reopen YYYY-MM" in out
    assert main(["node", "import", str(corrected), "--db", str(db), "--reopen", "2023-03"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "reopened cohorts: 2023-03" in out
    assert "data changed" not in out


def test_reopening_a_month_without_persons_is_accepted_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`node import --reopen 1990-01` (no person at the node has that cohort): still exit 0 and
    the import and the reopen stand, but a warning names the empty month(s), and only those."""
    from fedaudit.cli.main import main

    db = tmp_path / "node.db"
    assert main(["node", "import", str(FIXTURE_BUNDLE), "--db", str(db)]) == 0
    capsys.readouterr()
    argv = ["node", "import", str(FIXTURE_BUNDLE), "--db", str(db)]
    assert main([*argv, "--reopen", "1990-01", "--reopen", "2023-03"]) == 0
    captured = capsys.readouterr()
    out, err = " ".join(captured.out.split()), " ".join(captured.err.split())
    assert "reopened cohorts: 1990-01, 2023-03" in out
    assert "warning: --reopen 1990-01: no person at this node is in this cohort" in err
    assert "2023-03" not in err
    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            reopened = conn.execute(
                select(CohortDigest.cohort).where(CohortDigest.reopened)
            ).scalars()
            assert sorted(reopened) == ["1990-01", "2023-03"]
    finally:
        engine.dispose()
    # A month that holds persons draws no warning.
    assert main([*argv, "--reopen", "2023-03"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_running_node_charges_the_cohorts_of_the_data_it_reads_after_an_import(
    engine: Engine, tmp_path: Path
) -> None:
    """An import into a running node's database is picked up at the next request: a query
    over all cohorts then reads the new month and is charged for it."""
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    service = _service(engine, _policy(), OCT)  # one service across the import
    first = service.query(BOARD, "before", _spec(0.1))
    result = import_bundle(engine, _edited(tmp_path, "october", NEW_MONTH), now=OCT)
    second = service.query(BOARD, "after", _spec(0.1))
    assert first.data_version != second.data_version
    assert second.data_version == result.data_version
    assert _spent(service, "2025-09", "2025-10") == {"2025-09": 0.2, "2025-10": 0.1}
    assert service.capabilities(BOARD).dimensions["cohort"][-1] == "2025-10"


def test_the_ring_and_reconciliation_charge_every_cohort_that_has_persons(engine: Engine) -> None:
    """Requests that read the whole registry are charged up to the newest month (plus one
    for an import racing the read), not to cohorts that do not exist yet."""
    service = _service(engine, _policy(), SEPT)
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)
    assert service.ledger.existing_cohorts(SEPT) == (("0000-00", "2025-10"),)
    assert service.ledger.existing_cohorts(OCT) == (("0000-00", "2025-11"),)


@pytest.mark.postgres
def test_an_import_landing_while_a_query_counts_refuses_it_without_a_charge(
    pg_url: str,
) -> None:
    """If a new data version commits while a query's counts run, the query is refused and its
    charge rolled back: the counts may hold persons of a month it was not charged for."""
    from fedaudit.node.errors import RateLimitedError
    from fedaudit.node.store.models import DataVersion as DV

    engine = make_engine(pg_url)
    import_bundle(engine, FIXTURE_BUNDLE, now=SEPT)

    class Racing(NodeService):
        def _true_counts(self, tx, **kwargs):  # type: ignore[no-untyped-def]
            counts = super()._true_counts(tx, **kwargs)
            with engine.begin() as other:  # another process finishing an import
                other.execute(
                    DV.__table__.insert(),
                    {
                        "version": "v9-racing",
                        "bundle_digest": "x",
                        "imported_at": OCT,
                        "reference_date": OCT.date(),
                        "row_counts": "{}",
                    },
                )
            return counts

    service = Racing(engine, _policy(), clock=lambda: OCT)
    with pytest.raises(RateLimitedError, match="nothing was charged"):
        service.query(BOARD, "raced", _spec(0.1))
    assert _spent(service, "2025-09") == {"2025-09": 0.0}
    engine.dispose()
