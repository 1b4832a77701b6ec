"""Revocation reconciliation: exact lists, nothing learnt by the origin or the relay, refusals."""

from __future__ import annotations

import csv
import datetime as dt
import io
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from fedaudit.common import psi
from fedaudit.node.errors import RefusalReason, RefusedError
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.ring.reconcile import (
    ReconcileService,
    SignedAnswer,
    SignedBatch,
    query_statement,
)
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import ReconciliationMatch
from fedaudit.pki.authority import create_throwaway_pki
from fedaudit.pki.identity import NodeIdentity
from fedaudit.synthetic.federation import generate_federation
from tests.reconcile_support import add_reciprocity, expected_matches

REQUESTER = "oversight-board"
TODAY = dt.date(2026, 3, 1)


@pytest.fixture(scope="module", name="federation")
def _federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reconcile")
    fed = generate_federation(
        root / "bundles", seed=5, municipalities=3, candidates_per_municipality=400, today=TODAY
    )
    bundles = dict(zip(fed.municipalities, fed.bundles, strict=True))
    add_reciprocity(bundles, per_pair=150)
    return bundles


@pytest.fixture(scope="module", name="pki")
def _pki(tmp_path_factory: pytest.TempPathFactory, federation: dict[str, Path]):
    return create_throwaway_pki(tmp_path_factory.mktemp("pki"), [*federation, "M99"], REQUESTER)


def _identity(pki, name: str) -> NodeIdentity:
    paths = pki.nodes[name]
    return NodeIdentity.load(paths.cert, paths.key, pki.ca.cert)


@pytest.fixture(name="services")
def _services(tmp_path: Path, federation: dict[str, Path], pki) -> dict[str, ReconcileService]:
    out = {}
    for code, bundle in federation.items():
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        import_bundle(engine, bundle)
        policy = example_policy({REQUESTER: 2.0}, reconciliation=True)
        out[code] = ReconcileService(engine, policy, identity=_identity(pki, code))
    return out


def _run(services: dict[str, ReconcileService], run_id: str) -> None:
    for recogniser, service in services.items():
        for origin, other in services.items():
            if origin == recogniser:
                continue
            batch = service.ask(REQUESTER, run_id, origin)
            service.resolve(REQUESTER, other.answer(REQUESTER, batch))


def _matches(service: ReconcileService, run_id: str) -> set[tuple[str, str, str]]:
    with service._engine.connect() as conn:
        rows = conn.execute(
            select(
                ReconciliationMatch.certificate_id,
                ReconciliationMatch.origin_municipality,
                ReconciliationMatch.revoked_on,
            ).where(ReconciliationMatch.run_id == run_id)
        ).all()
    return {(c, o, d.isoformat()) for c, o, d in rows}


def test_lists_equal_a_clear_text_join(
    services: dict[str, ReconcileService], federation: dict[str, Path]
) -> None:
    expected = expected_matches(federation)
    assert sum(len(v) for v in expected.values()) > 100  # hundreds of references, many revoked
    _run(services, "run-1")
    for code, service in services.items():
        assert _matches(service, "run-1") == expected[code], code


def test_release_is_one_charged_dp_count_and_replays(services: dict[str, ReconcileService]) -> None:
    _run(services, "run-2")
    service = services["M01"]
    first = service.release(REQUESTER, "run-2", rho=0.5)
    again = service.release(REQUESTER, "run-2", rho=0.5)
    assert again.replayed
    assert again.value == first.value
    status = service._ledger.status(REQUESTER, dt.datetime.now(dt.UTC))
    assert status.requester_rho_spent == pytest.approx(first.rho)


def test_origin_sees_only_uniform_padded_points(services, federation) -> None:
    batch = services["M02"].ask(REQUESTER, "run-3", "M01")
    assert len(batch.points) // psi.POINT_BYTES == psi.bucket(150 + 5)
    # no point equals the unblinded element of any certificate number of either node
    numbers = []
    for bundle in federation.values():
        numbers += [
            line.split(",")[1]
            for line in (bundle / "certificates.csv").read_text().splitlines()[1:]
        ]
    clear = {psi.reference_point("run-3", "M01", n) for n in numbers}
    points = {batch.points[i : i + 32] for i in range(0, len(batch.points), 32)}
    assert not clear & points


def _refusal(exc: pytest.ExceptionInfo[RefusedError]) -> RefusalReason:
    return exc.value.reason


def test_a_batch_not_signed_by_a_federation_node_is_refused(services, pki, tmp_path) -> None:
    batch = services["M02"].ask(REQUESTER, "run-4", "M01")
    # the relay re-labels the batch as coming from M03: the signature no longer fits
    forged = SignedBatch(**{**batch.__dict__, "sender": "M03"})
    with pytest.raises(RefusedError, match="M03") as exc:
        services["M01"].answer(REQUESTER, forged)
    assert _refusal(exc) is RefusalReason.INVALID_PARAMETERS
    # a certificate from another CA (a relay's own "federation")
    other = create_throwaway_pki(tmp_path / "other", ["M02"], REQUESTER)
    rogue = _identity(other, "M02")
    statement_batch = SignedBatch(
        **{
            **batch.__dict__,
            "certificate_pem": rogue.certificate_pem,
            "signature": rogue.sign(query_statement("run-4", "M02", "M01", batch.points)),
        }
    )
    with pytest.raises(RefusedError, match="not issued by this federation"):
        services["M01"].answer(REQUESTER, statement_batch)


def test_policy_opt_in_at_both_ends(tmp_path: Path, federation, pki) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    import_bundle(engine, federation["M01"])
    closed = ReconcileService(
        engine, example_policy({REQUESTER: 2.0}), identity=_identity(pki, "M01")
    )
    with pytest.raises(RefusedError, match="does not receive") as exc:
        closed.ask(REQUESTER, "run-5", "M02")
    assert _refusal(exc) is RefusalReason.TEMPLATE_NOT_ALLOWED
    unsigned = ReconcileService(
        engine, example_policy({REQUESTER: 2.0}, reconciliation=True), identity=None
    )
    with pytest.raises(RefusedError, match="no federation certificate"):
        unsigned.ask(REQUESTER, "run-5", "M02")


def test_an_answer_can_be_read_once_per_origin_and_run(services) -> None:
    batch = services["M02"].ask(REQUESTER, "run-6", "M01")
    answer = services["M01"].answer(REQUESTER, batch)
    with pytest.raises(RefusedError, match="already answered"):
        services["M01"].answer(REQUESTER, batch)
    services["M02"].resolve(REQUESTER, answer)
    with pytest.raises(RefusedError, match="did not ask"):
        services["M02"].resolve(REQUESTER, answer)
    with pytest.raises(RefusedError, match="once only"):
        services["M02"].ask(REQUESTER, "run-6", "M01")


def test_a_tampered_answer_is_refused(services) -> None:
    batch = services["M02"].ask(REQUESTER, "run-7", "M01")
    answer = services["M01"].answer(REQUESTER, batch)
    table = bytearray(answer.table)
    table[0] ^= 1
    with pytest.raises(RefusedError, match="does not verify"):
        services["M02"].resolve(
            REQUESTER, SignedAnswer(**{**answer.__dict__, "table": bytes(table)})
        )


def test_normalised_numbers_match_across_spellings() -> None:
    a = psi.reference_point("r", "M01", "M01-2021-00001")
    assert a == psi.reference_point("r", "M01", "m01 2021 00001")
    assert a == psi.reference_point("r", "M01", "M0120210 0001")
    assert a != psi.reference_point("r", "M02", "M01-2021-00001")
    assert a != psi.reference_point("s", "M01", "M01-2021-00001")


def test_data_officer_sees_the_list(
    services: dict[str, ReconcileService],
    federation: dict[str, Path],
    tmp_path: Path,
) -> None:
    """`fedaudit node reconcile show`, run as a user would: table, CSV, and wrong input."""
    _run(services, "cli-run")
    db = str(services["M02"]._engine.url.database)
    cli = [sys.executable, "-m", "fedaudit.cli.main", "node", "reconcile", "show", "--db"]
    shown = subprocess.run([*cli, db], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "run cli-run: checked M01" in shown.stdout
    as_csv = subprocess.run([*cli, db, "--csv"], capture_output=True, text=True, check=False)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    expected = expected_matches(federation)["M02"]
    assert {
        (r["certificate_id"], r["origin_municipality"], r["revoked_on"]) for r in rows
    } == expected
    missing = subprocess.run(
        [*cli, str(tmp_path / "typo.db")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2
    assert "no such node database" in missing.stderr
    assert not (tmp_path / "typo.db").exists()
    unknown = subprocess.run(
        [*cli, db, "--run", "nope"], capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2
    assert "no reconciliation run 'nope'" in unknown.stderr


def test_a_revoked_peer_is_refused_and_an_unusable_crl_refuses_everyone(
    tmp_path: Path, federation: dict[str, Path], pki
) -> None:
    from cryptography import x509

    from fedaudit.pki.enrolment import RevocationList

    revoked_m02 = x509.load_pem_x509_certificate(pki.nodes["M02"].cert.read_bytes())
    crl = [
        RevocationList(
            frozenset({revoked_m02.serial_number}), dt.datetime.max.replace(tzinfo=dt.UTC)
        )
    ]
    services = {}
    for code in ("M01", "M02"):
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        import_bundle(engine, federation[code])
        policy = example_policy({REQUESTER: 2.0}, reconciliation=True)
        services[code] = ReconcileService(
            engine, policy, identity=_identity(pki, code), revocations=lambda: crl[0]
        )
    batch = services["M02"].ask(REQUESTER, "crl-run", "M01")
    with pytest.raises(RefusedError, match="revoked by the federation CA"):
        services["M01"].answer(REQUESTER, batch)
    crl[0] = None
    other = services["M01"].ask(REQUESTER, "crl-run", "M02")
    with pytest.raises(RefusedError, match="CRL is unusable"):
        services["M02"].answer(REQUESTER, other)


def test_another_requester_cannot_squat_a_reconciliation_run(
    tmp_path: Path, federation: dict[str, Path], pki
) -> None:
    """Run ids belong to their requester at both ends: a squatter's run with the board's
    run id blocks neither the board's ask, nor the origin's answer, nor its release."""
    services = {}
    for code in ("M01", "M02"):
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        import_bundle(engine, federation[code])
        policy = example_policy({REQUESTER: 2.0, "squatter": 1.0}, reconciliation=True)
        services[code] = ReconcileService(engine, policy, identity=_identity(pki, code))
    for requester in ("squatter", REQUESTER):
        batch = services["M02"].ask(requester, "board-run", "M01")
        services["M02"].resolve(requester, services["M01"].answer(requester, batch))
    squatter = services["M02"].release("squatter", "board-run", rho=0.1)
    board = services["M02"].release(REQUESTER, "board-run", rho=0.5)
    assert not board.replayed
    assert board.rho != squatter.rho
