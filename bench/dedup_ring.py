"""Benchmark of the blinding ring: 5 nodes x 20k candidates, the 2 default keys, over real gRPC.

Prints the ring's scalar multiplications per second against raw libsodium scalar
multiplications per second on the same cores, measured in the same run (target: a
ratio of at least 0.8), the end-to-end time of `run_dedup` and the coordinator's peak
memory. The nodes run in a child process (with their own worker pool), so the peak
resident memory of this process is the coordinator's.

    .venv/bin/python bench/dedup_ring.py [--nodes 5] [--candidates 20000]
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing
import random
import resource
import string
import tempfile
import time
from pathlib import Path

import structlog

REQUESTER = "oversight-board"
SHARED = 0.05  # share of each node's candidates also registered at another node


def _write_bundle(directory: Path, code: str, people: list[tuple[str, str, str, str]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "municipality.csv": (["municipality_code", "name", "country"], [[code, code, "AT"]]),
        "providers.csv": (
            ["provider_id", "name", "provider_type", "accreditation_status"],
            [["P1", "School", "school", "accredited"]],
        ),
        "qualifications.csv": (
            ["qualification_id", "title", "isco_code", "eqf_level"],
            [["Q1", "Welder", "7212", 3], ["Q2", "Electrician", "7411", 4]],
        ),
        "candidates.csv": (
            ["candidate_id", "family_name", "given_name", "date_of_birth", "sex", "citizenship"],
            [[f"C{i}", f, g, d, "unknown", ""] for i, (g, f, d, _) in enumerate(people)],
        ),
        "assessments.csv": (
            [
                "assessment_id",
                "candidate_id",
                "qualification_id",
                "provider_id",
                "attempt_no",
                "assessed_on",
                "result",
            ],
            [
                [f"A{i}", f"C{i}", q, "P1", 1, "2023-03-01", "pass"]
                for i, (*_, q) in enumerate(people)
            ],
        ),
        "certificates.csv": (
            [
                "certificate_id",
                "certificate_no",
                "candidate_id",
                "qualification_id",
                "provider_id",
                "pathway",
                "origin_municipality",
                "origin_certificate_no",
                "issued_on",
                "status",
                "status_changed_on",
            ],
            [
                [
                    f"Z{i}",
                    f"{code}-{i}",
                    f"C{i}",
                    q,
                    "P1",
                    "training",
                    "",
                    "",
                    "2023-04-01",
                    "valid",
                    "",
                ]
                for i, (*_, q) in enumerate(people)
            ],
        ),
    }
    for name, (header, rows) in files.items():
        with (directory / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)


def _people(nodes: int, candidates: int, seed: int) -> list[list[tuple[str, str, str, str]]]:
    rng = random.Random(seed)

    def name() -> str:
        return rng.choice(string.ascii_uppercase) + "".join(
            rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 9))
        )

    def person() -> tuple[str, str, str, str]:
        dob = f"{rng.randint(1960, 2004)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        return (name(), name(), dob, rng.choice(("Q1", "Q2")))

    per_node = [[person() for _ in range(candidates)] for _ in range(nodes)]
    for i in range(nodes):
        for j in range(int(candidates * SHARED)):
            other = (i + 1 + j % (nodes - 1)) % nodes
            per_node[other][j + 1] = per_node[i][j]
    return per_node


def _serve(directory: str, nodes: int, candidates: int, ports, stop) -> None:
    """Child process: import one bundle per node and serve DedupNode until told to stop."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from concurrent import futures
    from dataclasses import replace
    from types import MappingProxyType

    import grpc

    from fedaudit.node.ingest.bundle import import_bundle
    from fedaudit.node.privacy.policy import example_policy
    from fedaudit.node.ring.server import add_dedup_servicer
    from fedaudit.node.ring.service import TEMPLATE, DedupService
    from fedaudit.node.store.db import make_engine
    from fedaudit.pki.authority import create_throwaway_pki
    from fedaudit.pki.identity import NodeIdentity

    root = Path(directory)
    policy = example_policy({REQUESTER: 10.0}, max_rho_per_request=10.0)
    policy = replace(policy, bounds=MappingProxyType({**policy.bounds, TEMPLATE: 2}))
    codes = [f"M{i + 1:02d}" for i in range(nodes)]
    # Ring membership is proven with node certificates (a throw-away federation CA).
    pki = create_throwaway_pki(root / "pki", codes, REQUESTER)
    servers = []
    for i, people in enumerate(_people(nodes, candidates, seed=11)):
        code = codes[i]
        paths = pki.nodes[code]
        identity = NodeIdentity.load(paths.cert, paths.key, pki.ca.cert)
        _write_bundle(root / code, code, people)
        engine = make_engine(f"sqlite:///{root / code}.db")
        import_bundle(engine, root / code)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
        )
        add_dedup_servicer(server, DedupService(engine, policy, identity=identity))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        ports.put((code, port))
    stop.wait()
    for server in servers:
        server.stop(None)
    from fedaudit.common.ring_crypto import shutdown_pool

    shutdown_pool()


def raw_rate(points: int) -> tuple[float, int]:
    """libsodium scalar multiplications per second on all cores (one process per core)."""
    from concurrent.futures import ProcessPoolExecutor

    from fedaudit.common import ring_crypto as rc

    workers = rc.worker_count()
    scalar = bytes(rc.random_scalar())
    buffer = b"".join(rc.random_element() for _ in range(points))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        list(pool.map(rc.blind_points, [scalar] * workers, [buffer[:3200]] * workers))  # warm
        start = time.perf_counter()
        list(pool.map(rc.blind_points, [scalar] * workers, [buffer] * workers))
        seconds = time.perf_counter() - start
    return workers * points / seconds, workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=20_000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    from rich.progress import Progress

    from fedaudit.common.ring_protocol import NAME_KEYS
    from fedaudit.coordinator.planning.plan import AuditPlan, Checks
    from fedaudit.coordinator.ring.config import DedupConfig
    from fedaudit.coordinator.ring.relay import GrpcDedupTransport
    from fedaudit.coordinator.ring.run import run_dedup

    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        child = ctx.Process(target=_serve, args=(tmp, args.nodes, args.candidates, ports, stop))
        child.start()
        print(f"building {args.nodes} node databases x {args.candidates} candidates ...")
        addresses = dict(ports.get(timeout=900) for _ in range(args.nodes))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        transports = {
            c: GrpcDedupTransport(c, f"127.0.0.1:{p}", requester=REQUESTER)
            for c, p in addresses.items()
        }
        plan = AuditPlan(name="bench", requester=REQUESTER, confidence=0.95, checks=Checks())
        config = DedupConfig(rho=1.0, keys=NAME_KEYS, shopping=False, revoked=False)
        with Progress() as bar:
            task = bar.add_task("ring hops", total=args.nodes**2)
            started = time.perf_counter()
            out = run_dedup(
                plan,
                transports,
                "bench",
                config=config,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
            end_to_end = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stop.set()
        child.join(timeout=60)
        if child.is_alive():
            child.terminate()
        ring = out.ring
        assert ring is not None, out.duplicates_section["reason"]
        ring_rate = ring.scalar_mults / ring.seconds
        raw, workers = raw_rate(20_000)
    print(f"rows {len(ring.rows)}, scalar multiplications {ring.scalar_mults}")
    print(
        f"ring:  {ring_rate:,.0f} scalar mults/s (ring phase {ring.seconds:.1f} s, {workers} cores)"
    )
    print(f"raw:   {raw:,.0f} libsodium scalar mults/s on the same {workers} cores")
    print(f"ratio: {ring_rate / raw:.2f} (target >= 0.8)")
    print(f"end-to-end run_dedup: {end_to_end:.1f} s (join + ring + counting + DP releases)")
    print(
        f"coordinator peak RSS: {peak_kib / 1024:.0f} MiB "
        f"(+{(peak_kib - before) / 1024:.0f} MiB during the run)"
    )
    print(f"duplicated persons (pre-noise, internal): {out.counts.duplicated}")


if __name__ == "__main__":
    main()
