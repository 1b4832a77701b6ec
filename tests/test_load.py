"""Load on one node over loopback gRPC: many concurrent queries, bounded in count and time.

16 client threads (two requesters, eight each) send mixed-template queries with
distinct request ids; some are identical queries (replayed free of charge), and one
requester's cap runs out mid-run (refused, free). Throughput and p99 latency are
printed; the assertions are about money: the ledger's spent rho equals the sum of the
charges of the answered, non-replayed requests exactly (integer units), no refused
request left a trace, and no cap was exceeded.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import Engine, func, select

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.common.budget_units import cap_to_units, rho_to_units
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import Policy, parse_policy
from fedaudit.node.query import catalogue
from fedaudit.node.query.service import NodeService
from fedaudit.node.rpc.guard import MalformedRequestGuard
from fedaudit.node.rpc.limits import LimitSettings, RequestLimiter
from fedaudit.node.server import RunningNode, start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import LedgerEntry
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
THREADS_PER_REQUESTER = 8
QUERIES_PER_THREAD = 40
TIME_LIMIT_S = 10.0
"""Each run stops issuing queries after this long, whatever is left."""
CAPS = {"oversight-board": 1.5, "regional-statistics": 100.0}
NODE_CAP = 60.0
RHOS = tuple(n / 1000 for n in range(1, 41))
"""Enough distinct costs that most queries are new, few enough that some repeat (replays)."""


def _policy() -> Policy:
    return parse_policy(
        {
            "version": 1,
            "requesters": {name: {"rho_per_period": cap} for name, cap in CAPS.items()},
            "budget": {"period": "year", "node_rho_total": NODE_CAP, "max_rho_per_request": 0.5},
        },
        source="<load policy>",
    )


@dataclass
class Tally:
    """What the clients saw (appended from many threads under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    charged_units: Counter[str] = field(default_factory=Counter)
    charged_count: Counter[str] = field(default_factory=Counter)
    replayed: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)


def _request(rng: random.Random, rid: str) -> pb.QueryRequest:
    template = catalogue.TEMPLATES[rng.choice(sorted(catalogue.TEMPLATES))]
    group_by = [rng.choice(template.dimensions)] if rng.random() < 0.5 else []
    if rng.random() < 0.8:
        return pb.QueryRequest(
            request_id=rid,
            template=template.name,
            group_by=group_by,
            mechanism=pb.DISCRETE_GAUSSIAN,
            rho=rng.choice(RHOS),
        )
    return pb.QueryRequest(
        request_id=rid,
        template=template.name,
        group_by=group_by,
        mechanism=pb.DISCRETE_LAPLACE,
        epsilon=rng.choice((0.1, 0.2)),
    )


def _client(port: int, requester: str, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    metadata = ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, requester))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AuditNodeStub(channel)
        for i in range(QUERIES_PER_THREAD):
            if time.monotonic() > deadline:
                return
            request = _request(rng, f"load-{requester}-{seed}-{i}")
            start = time.perf_counter()
            try:
                answer = stub.Query(request, metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                elapsed = time.perf_counter() - start
                status = rpc_status.from_call(exc)
                info = error_details_pb2.ErrorInfo()
                reason = (
                    info.reason
                    if status is not None and status.details and status.details[0].Unpack(info)
                    else f"no details: {exc.code()} {exc.details()}"
                )
                with tally.lock:
                    tally.latencies.append(elapsed)
                    tally.refusals[reason] += 1
                    if reason != "BUDGET_EXHAUSTED":
                        tally.bad.append(f"{exc.code()}: {exc.details()}")
                continue
            elapsed = time.perf_counter() - start
            with tally.lock:
                tally.latencies.append(elapsed)
                if answer.replayed:
                    tally.replayed += 1
                else:
                    tally.charged_units[requester] += rho_to_units(answer.charge.rho)
                    tally.charged_count[requester] += 1


@pytest.fixture(name="loaded_node")
def _loaded_node(db_url: str) -> Iterator[tuple[RunningNode, Engine]]:
    """One node as deployed (limiter generous enough not to bind) on the parametrised database."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only
    engine = make_engine(db_url)
    import_bundle(engine, FIXTURE_BUNDLE)
    limiter = RequestLimiter(LimitSettings(max_concurrent=16, rate_per_second=1000, burst=1000))
    node = start_node_server(
        NodeService(engine, _policy()),
        max_workers=16,
        interceptors=[limiter, MalformedRequestGuard()],
    )
    yield node, engine
    node.stop(grace=None)
    engine.dispose()


def test_concurrent_load_keeps_the_ledger_exact(
    loaded_node: tuple[RunningNode, Engine], db_url: str
) -> None:
    """16 threads of mixed queries: throughput and p99 printed; ledger = sum of charges, caps hold."""
    node, engine = loaded_node
    tally = Tally()
    deadline = time.monotonic() + TIME_LIMIT_S
    threads = [
        threading.Thread(target=_client, args=(node.port, requester, seed, deadline, tally))
        for requester in CAPS
        for seed in range(THREADS_PER_REQUESTER)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIME_LIMIT_S + 60)
    wall = time.perf_counter() - start
    assert not any(thread.is_alive() for thread in threads)

    calls = len(tally.latencies)
    ordered = sorted(tally.latencies)
    p99 = ordered[min(calls - 1, int(0.99 * calls))]
    backend = engine.dialect.name
    print(
        f"\nload ({backend}): {calls} queries from {len(threads)} threads in {wall:.2f} s = "
        f"{calls / wall:.1f} queries/s; latency p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms; charged "
        f"{sum(tally.charged_count.values())}, replayed {tally.replayed}, "
        f"refused {dict(tally.refusals)}"
    )
    assert not tally.bad, tally.bad[:5]
    assert calls >= 100, "too few queries to call this a load test"
    assert tally.refusals["BUDGET_EXHAUSTED"] > 0, "the small cap never bound: adjust CAPS"
    assert tally.replayed > 0, "no identical queries were replayed: adjust RHOS"

    with engine.connect() as conn:
        rows = conn.execute(
            select(
                LedgerEntry.requester,
                LedgerEntry.state,
                func.count(),
                func.sum(LedgerEntry.rho_units),
            ).group_by(LedgerEntry.requester, LedgerEntry.state)
        ).all()
    assert {state for _, state, _, _ in rows} == {"released"}, rows
    ledger_units = {requester: int(units) for requester, _, _, units in rows}
    ledger_count = {requester: int(count) for requester, _, count, _ in rows}
    assert ledger_units == dict(tally.charged_units)
    assert ledger_count == dict(tally.charged_count)
    for requester, cap in CAPS.items():
        assert ledger_units.get(requester, 0) <= cap_to_units(cap)
    assert sum(ledger_units.values()) <= cap_to_units(NODE_CAP)
