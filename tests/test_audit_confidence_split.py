"""The audit's stated confidence holds over quality tests and duplicate tests together.

An audit with a duplicates check makes two families of tests: the quality gap tests
(error control over their own family) and the ring's tested counts (an interval above
zero is a finding). The report states one audit-wide confidence, so the error budgets
the two families actually use must add up to at most alpha = 1 - confidence.

What each family used is read back from the report itself: the quality family from
its error control (tests x (1 - per-test confidence) under Bonferroni), the duplicate
family from each tested ring metric's interval: the exact probability that noise of the
release's declared mechanism and scale falls outside it (the intervals are OpenDP's
noise intervals, whose discrete widths make them a little conservative).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import structlog
from dedup_support import ring_credentials

from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.inprocess import InProcessDedupTransport, InProcessNodeTransport
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import example_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.ring.service import DedupService
from fedaudit.node.store.db import make_engine
from fedaudit.synthetic.federation import generate_federation

RING_RELEASE_OF = {
    "duplicated_persons": "dup_overall",
    "assessment_shopping": "shopping_overall",
    "revoked_still_recognised": "revoked_overall",
}
"""The ring release each tested ring metric is the estimate of."""


def _miss_probability(mechanism: str, scale: float, half_width: float) -> float:
    """P(|noise| > half_width): how often the reported interval misses, exactly.

    Discrete Gaussian: P(k) proportional to exp(-k^2 / (2 s^2)), summed (terms beyond
    40 s are below double precision); discrete Laplace: 2 r^(h+1) / (1 + r), r = e^(-1/s).
    """
    h = math.floor(half_width)
    if mechanism == "discrete_laplace":
        r = math.exp(-1.0 / scale)
        return 2 * r ** (h + 1) / (1 + r)
    top = h + math.ceil(40 * scale) + 1
    weights = [math.exp(-(k * k) / (2 * scale * scale)) for k in range(top)]
    total = weights[0] + 2 * math.fsum(weights[1:])
    return 2 * math.fsum(weights[h + 1 :]) / total


def _family_alphas(report: dict[str, Any]) -> tuple[float, float, int]:
    """(quality family's alpha, duplicate family's alpha, duplicate tests) as the report shows."""
    ec = report["audit"]["error_control"]
    quality = ec["tests"] * (1.0 - ec["per_test_confidence"])
    coordinator = report["privacy"]["coordinator"]
    scales = {r["name"]: r["scale"] for r in coordinator["releases"]}
    ring_tests = [
        m
        for m in report["metrics"]
        if m["tested"] and m["metric"] in RING_RELEASE_OF and "blinding ring" in m["note"]
    ]
    duplicates = sum(
        _miss_probability(
            coordinator["mechanism"],
            scales[RING_RELEASE_OF[m["metric"]]],
            (m["ci"][1] - m["ci"][0]) / 2,
        )
        for m in ring_tests
    )
    return quality, duplicates, len(ring_tests)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default plan (every check, duplicates included) on a small synthetic federation."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    root: Path = tmp_path_factory.mktemp("split")
    fed = generate_federation(
        root / "fed", municipalities=3, candidates_per_municipality=400, today=dt.date(2026, 6, 1)
    )
    plan = load_plan(default_plan_path())
    policy = example_policy({plan.requester: 50.0}, max_rho_per_request=5.0)
    nodes, rings, engines = {}, {}, []
    credentials = ring_credentials(root / "pki", fed.municipalities)
    for code, bundle in zip(fed.municipalities, fed.bundles, strict=True):
        engine = make_engine(f"sqlite:///{root / code}.db")
        engines.append(engine)
        import_bundle(engine, bundle)
        service = NodeService(engine, policy)
        nodes[code] = InProcessNodeTransport(code, service, requester=plan.requester)
        rings[code] = InProcessDedupTransport(
            code,
            DedupService(engine, policy, ledger=service.ledger, identity=credentials[code]),
            requester=plan.requester,
        )
    try:
        addresses = {code: f"127.0.0.1:{1000 + i}" for i, code in enumerate(nodes)}  # unused
        return run_audit(plan.with_nodes(addresses), nodes, dedup_transports=rings)
    finally:
        for e in engines:
            e.dispose()


def test_quality_and_duplicate_tests_share_the_audit_wide_error_budget(
    report: dict[str, Any],
) -> None:
    """alpha used by quality tests + alpha used by duplicate tests <= 1 - stated confidence."""
    assert report["duplicates"]["status"] == "complete"
    alpha = 1.0 - report["audit"]["confidence"]
    quality, duplicates, ring_tests = _family_alphas(report)
    print(
        f"stated alpha {alpha:g}: quality family {quality:.6g} "
        f"({report['audit']['error_control']['tests']} tests), duplicate family "
        f"{duplicates:.6g} ({ring_tests} tests)"
    )
    assert report["audit"]["error_control"]["tests"] > 0
    assert ring_tests > 0
    assert quality + duplicates <= alpha * (1 + 1e-6)
    assert report["audit"]["error_control"]["family_confidence"] == report["audit"]["confidence"]
