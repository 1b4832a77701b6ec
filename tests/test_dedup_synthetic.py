"""The ring on the demo's synthetic federation finds every planted cross-municipality case."""

from __future__ import annotations

import datetime as dt

import pytest
from dedup_support import (
    REQUESTER,
    ring_credentials,
    ring_policy,
    spy_on_tally,
    start_ring_node,
)

from fedaudit.coordinator.planning.plan import AuditPlan, Checks
from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.relay import GrpcDedupTransport
from fedaudit.coordinator.ring.run import run_dedup
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.store.db import make_engine
from fedaudit.synthetic.federation import generate_federation

PLAN = AuditPlan(name="ring-demo", requester=REQUESTER, confidence=0.95, checks=Checks())


@pytest.mark.slow
def test_planted_duplicates_shopping_and_revocations_are_all_counted(tmp_path, monkeypatch):
    """Pre-noise counts cover every planted duplicate, shopping case and revoked-but-recognised
    certificate (background persons may add more, never fewer)."""
    fed = generate_federation(
        tmp_path / "fed",
        municipalities=4,
        candidates_per_municipality=400,
        today=dt.date(2026, 6, 1),
    )
    nodes, engines = {}, []
    credentials = ring_credentials(tmp_path / "pki", fed.municipalities)
    for code, bundle in zip(fed.municipalities, fed.bundles, strict=True):
        engine = make_engine(f"sqlite:///{tmp_path / code}.db")
        import_bundle(engine, bundle)
        engines.append(engine)
        nodes[code] = start_ring_node(code, engine, ring_policy(), credential=credentials[code])
    transports = {
        c: GrpcDedupTransport(c, n.address, requester=REQUESTER) for c, n in nodes.items()
    }
    spy = spy_on_tally(monkeypatch)
    try:
        out = run_dedup(PLAN, transports, "synthetic", config=DedupConfig(rho=1.0))
    finally:
        for n in nodes.values():
            n.server.stop(None)
        for e in engines:
            e.dispose()
    planted = {}
    for p in fed.planted:
        planted[p.kind] = planted.get(p.kind, 0) + 1
    assert out.duplicates_section["status"] == "complete"
    counts = spy.counts  # exact, inside the tally node
    print(
        f"planted {planted}; counted dup={counts.duplicated} shop={counts.shopping} "
        f"revoked={counts.revoked}"
    )
    assert counts.duplicated >= planted["cross_municipality_duplicates"]
    assert counts.shopping >= planted["assessment_shopping"]
    assert counts.revoked == planted["revoked_still_recognised"]
    revoked_pairs = {
        (p.municipality, p.description.split()[5])
        for p in fed.planted
        if p.kind == "revoked_still_recognised"
    }
    assert {k for k, v in counts.revoked_by_pair.items() if v} == revoked_pairs
