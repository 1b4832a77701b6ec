"""Benchmark of the blinding ring: 5 nodes x 20k candidates, the 2 default keys, over real gRPC.

Prints, measured in the same run on the same cores:

* the ring's scalar multiplications per second against raw libsodium scalar
  multiplications per second (target: a ratio of at least 0.8);
* the end-to-end time of `run_dedup` with the nodes' DP dummy padding (the default)
  against the same nodes with padding off (target: padded <= 1.5 x unpadded);
* with `--psi`, what a user would otherwise do: pairwise PSI-cardinality with the
  `openmined-psi` package, one run per pair of municipalities and key, the pairs spread
  over one process per core (target: the padded ring at least 2 x faster). Install it
  with `.venv/bin/pip install --no-deps openmined-psi==2.0.6` (its protobuf pin clashes
  with fedaudit's, see pyproject.toml);
* the coordinator's peak memory (the nodes run in a child process with their own pool).

    .venv/bin/python bench/dedup_ring.py [--nodes 5] [--candidates 20000] [--psi] [--full]

`--full` also runs the shopping and revocation checks (more row shapes to pad).
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing
import random
import resource
import statistics
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
    """Child process: import one bundle per node and serve DedupNode until told to stop.

    Each node serves twice, on two ports over the same database: with the policy's
    default DP dummy padding and with padding off, so both rings see the same registries.
    """
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
    bare = replace(policy, ring=replace(policy.ring, padding_rho=None))
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
        found = []
        for rules in (policy, bare):
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=8),
                options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
            )
            add_dedup_servicer(server, DedupService(engine, rules, identity=identity))
            found.append(server.add_insecure_port("127.0.0.1:0"))
            server.start()
            servers.append(server)
        ports.put((code, tuple(found)))
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


def _psi_pair(client: list[str], server: list[str]) -> int:
    """One PSI-cardinality run (openmined-psi, RAW setup, fpr 1e-9): the client's answer."""
    import private_set_intersection.python as psi

    c = psi.client.CreateWithNewKey(False)
    s = psi.server.CreateWithNewKey(False)
    setup = s.CreateSetupMessage(1e-9, len(client), server, psi.DataStructure.RAW)
    response = s.ProcessRequest(c.CreateRequest(client))
    return int(c.GetIntersectionSize(setup, response))


def psi_baseline(nodes: int, candidates: int, keys: tuple[str, ...]) -> tuple[float, int, int]:
    """Wall-clock seconds of pairwise PSI-cardinality for every pair and key, over all cores.

    Key strings as the ring builds them (normalised, run- and occupation-bound), so the
    sets are what a user would intersect instead. Returns (seconds, runs, largest count).
    """
    from concurrent.futures import ProcessPoolExecutor

    from fedaudit.common import ring_crypto as rc
    from fedaudit.node.ring.keys import Identity, key_string, key_value

    isco = {"Q1": "7212", "Q2": "7411"}
    sets = []
    for people in _people(nodes, candidates, seed=11):
        per_key = {}
        for key in keys:
            values = set()
            for given, family, dob, q in people:
                value = key_value(Identity.of(given, family, dob), key)
                if value is not None:
                    values.add(key_string("bench", key, isco[q], value).decode())
            per_key[key] = sorted(values)
        sets.append(per_key)
    jobs = [
        (sets[i][k], sets[j][k]) for i in range(nodes) for j in range(i + 1, nodes) for k in keys
    ]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=rc.worker_count(), mp_context=ctx) as pool:
        list(pool.map(_psi_pair, [["a"]], [["a"]]))  # warm the workers (import, spawn)
        start = time.perf_counter()
        found = list(pool.map(_psi_pair, [a for a, _ in jobs], [b for _, b in jobs]))
        seconds = time.perf_counter() - start
    return seconds, len(jobs), max(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=20_000)
    parser.add_argument("--psi", action="store_true", help="also time pairwise openmined-psi")
    parser.add_argument("--full", action="store_true", help="shopping and revocations too")
    parser.add_argument(
        "--bound",
        type=int,
        default=1,
        help="rows per person and kind (default 1, as the default plan; the padding grows with it)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each ring, alternated (median reported)"
    )
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
    results: dict[str, list] = {"unpadded": [], "padded": []}
    with tempfile.TemporaryDirectory() as tmp:
        child = ctx.Process(target=_serve, args=(tmp, args.nodes, args.candidates, ports, stop))
        child.start()
        print(f"building {args.nodes} node databases x {args.candidates} candidates ...")
        addresses = dict(ports.get(timeout=900) for _ in range(args.nodes))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        plan = AuditPlan(name="bench", requester=REQUESTER, confidence=0.95, checks=Checks())
        config = DedupConfig(
            rho=1.0, keys=NAME_KEYS, shopping=args.full, revoked=args.full, bound=args.bound
        )
        rounds = [
            (label, which, k)
            for k in range(args.repeat)
            for label, which in (("unpadded", 1), ("padded", 0))
        ]
        for label, which, k in rounds:
            transports = {
                c: GrpcDedupTransport(c, f"127.0.0.1:{p[which]}", requester=REQUESTER)
                for c, p in addresses.items()
            }
            with Progress() as bar:
                task = bar.add_task(f"ring hops ({label})", total=args.nodes**2)
                started = time.perf_counter()
                out = run_dedup(
                    plan,
                    transports,
                    f"bench-{label}-{k}",
                    config=config,
                    progress=lambda done, total, t=task: bar.update(t, completed=done, total=total),
                )
                end_to_end = time.perf_counter() - started
            assert out.ring is not None, out.duplicates_section["reason"]
            results[label].append((out, end_to_end))
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stop.set()
        child.join(timeout=60)
        if child.is_alive():
            child.terminate()
    raw, workers = raw_rate(20_000)

    def _released(out) -> int:
        assert out.releases is not None
        return out.releases.values["dup_overall"].values[0]

    for label, runs in results.items():
        for out, end_to_end in runs:
            ring = out.ring
            rate = ring.scalar_mults / ring.seconds
            print(
                f"{label:9s} rows {sum(ring.rows.values())}, scalar mults {ring.scalar_mults}, "
                f"ring phase {ring.seconds:.1f} s, {rate:,.0f} mults/s (ratio to raw "
                f"{rate / raw:.2f}), end-to-end run_dedup {end_to_end:.1f} s, duplicated "
                f"persons (noisy, from the tally node) {_released(out)}"
            )
    print(f"raw:      {raw:,.0f} libsodium scalar mults/s on the same {workers} cores")
    padded = statistics.median(t for _, t in results["padded"])
    unpadded = statistics.median(t for _, t in results["unpadded"])
    print(f"median end to end: padded {padded:.1f} s, unpadded {unpadded:.1f} s")
    print(f"padded / unpadded end to end: {padded / unpadded:.2f} (target <= 1.5)")
    print(
        f"coordinator peak RSS: {peak_kib / 1024:.0f} MiB "
        f"(+{(peak_kib - before) / 1024:.0f} MiB during the runs)"
    )
    if args.psi:
        seconds, runs, largest = psi_baseline(args.nodes, args.candidates, NAME_KEYS)
        print(
            f"pairwise openmined-psi: {runs} runs (pairs x keys) in {seconds:.1f} s on "
            f"{workers} processes (largest intersection {largest}); padded ring end to end "
            f"{padded:.1f} s: {seconds / padded:.2f} x faster (target >= 2)"
        )


if __name__ == "__main__":
    main()
