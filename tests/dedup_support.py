"""Helpers for the blinding-ring tests: FEBRL data as bundles, ring nodes, a clear-text oracle."""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import grpc

from fedaudit.common.ring_counting import DedupCounts
from fedaudit.common.ring_protocol import LabelledRow
from fedaudit.node.privacy.policy import Policy, example_policy
from fedaudit.node.ring.keys import PersonInput, key_value, merge_local
from fedaudit.node.ring.rows import load_persons
from fedaudit.node.ring.server import add_dedup_servicer
from fedaudit.node.ring.service import TEMPLATE, DedupService
from fedaudit.pki.authority import create_throwaway_pki
from fedaudit.pki.identity import NodeIdentity

REQUESTER = "oversight-board"
ISCO = "7212"


def ring_policy(rho: float = 5.0, *, requesters: Sequence[str] = (REQUESTER,)) -> Policy:
    """A permissive policy that also bounds (and so allows) the `dedup_ring` template."""
    policy = example_policy(dict.fromkeys(requesters, rho), max_rho_per_request=rho)
    return replace(policy, bounds=MappingProxyType({**policy.bounds, TEMPLATE: 2}))


def _valid_dob(value: object) -> dt.date | None:
    text = str(value or "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return day if dt.date(1900, 1, 1) <= day <= dt.date(2005, 1, 1) else None


def write_febrl_bundle(
    directory: Path, code: str, records: Iterable[tuple[str, dict]], *, national_id: bool
) -> int:
    """A data bundle of FEBRL records: one candidate, assessment and certificate each.

    Records the contract would reject (missing name, impossible date) are left out,
    as a municipality's export could not contain them. Returns the candidates written.
    """
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, header: list[str], rows: list[list[object]]) -> None:
        with (directory / name).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)

    write("municipality.csv", ["municipality_code", "name", "country"], [[code, code, "AT"]])
    write(
        "providers.csv",
        ["provider_id", "name", "provider_type", "accreditation_status"],
        [["P1", "School", "school", "accredited"]],
    )
    write(
        "qualifications.csv",
        ["qualification_id", "title", "isco_code", "eqf_level"],
        [["Q1", "Welder", ISCO, 3]],
    )
    cands, assess, certs = [], [], []
    for i, (rec_id, r) in enumerate(records):
        given, family = r.get("given_name"), r.get("surname")
        dob = _valid_dob(r.get("date_of_birth"))
        if not isinstance(given, str) or not isinstance(family, str) or not given or not family:
            continue
        if dob is None:
            continue
        nid = r.get("soc_sec_id") if national_id else None
        cid = f"C{i}"
        cands.append([cid, family, given, dob.isoformat(), "unknown", "", nid or ""])
        assess.append([f"A{i}", cid, "Q1", "P1", 1, "2022-03-01", "pass"])
        certs.append(
            [f"Z{i}", f"{code}-{i}", cid, "Q1", "P1", "training", "", "", "2022-04-01", "valid", ""]
        )
        del rec_id
    write(
        "candidates.csv",
        [
            "candidate_id",
            "family_name",
            "given_name",
            "date_of_birth",
            "sex",
            "citizenship",
            "national_id",
        ],
        cands,
    )
    write(
        "assessments.csv",
        [
            "assessment_id",
            "candidate_id",
            "qualification_id",
            "provider_id",
            "attempt_no",
            "assessed_on",
            "result",
        ],
        assess,
    )
    write(
        "certificates.csv",
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
        certs,
    )
    return len(cands)


@dataclass
class RingNode:
    name: str
    server: grpc.Server
    port: int
    service: DedupService

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def ring_credentials(
    directory: Path, codes: Iterable[str], *, days: int = 2
) -> dict[str, NodeIdentity]:
    """A throw-away federation CA and each node's ring identity (its node certificate),
    valid for `days` (a compressed-time test of years needs them valid that long)."""
    codes = list(codes)
    pki = create_throwaway_pki(directory, codes, REQUESTER, days=days)
    return {c: NodeIdentity.load(pki.nodes[c].cert, pki.nodes[c].key, pki.ca.cert) for c in codes}


def start_ring_node(
    name: str,
    engine,
    policy: Policy,
    *,
    credential: NodeIdentity,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> RingNode:
    """A real gRPC server on loopback serving only DedupNode for `engine`.

    Transport without TLS (the mTLS tests add it); ring membership still proven with
    the node's federation certificate, as in production.
    """
    service = DedupService(engine, policy, identity=credential)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=list(interceptors),
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    add_dedup_servicer(server, service)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return RingNode(name, server, port, service)


# --- the clear-text oracle ---------------------------------------------------------------------


def oracle_duplicates(
    nodes: dict[str, list[PersonInput]], keys: Sequence[str], *, bound: int = 2
) -> tuple[int, dict[int, int], dict[tuple[str, str], int]]:
    """Union-find in the clear over the same keys and local merge as the ring.

    Returns (duplicated persons, overlap histogram, pairwise counts) where a person is a
    component of (node, person, occupation) rows sharing any key value, certified in
    two or more municipalities.
    """
    rows: list[tuple[str, str, bool, list[str | None]]] = []
    for muni, persons in nodes.items():
        people, _ = merge_local(persons, keys, muni, bound=bound, revoked=False)
        for p in people:
            rows.append((muni, p.isco_code, p.certified, list(p.keys)))
    parent = list(range(len(rows)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[tuple[str, str, str], int] = {}
    for i, (_, isco, _, values) in enumerate(rows):
        for k, v in zip(keys, values, strict=True):
            if v is None:
                continue
            j = first.setdefault((k, isco, v), i)
            if j != i:
                parent[find(i)] = find(j)
    spans: dict[int, set[str]] = defaultdict(set)
    for i, (muni, _, certified, _) in enumerate(rows):
        if certified:
            spans[find(i)].add(muni)
    dup = 0
    hist: dict[int, int] = {}
    pairs: dict[tuple[str, str], int] = {}
    for s in spans.values():
        if len(s) >= 2:
            dup += 1
            hist[len(s)] = hist.get(len(s), 0) + 1
            ordered = sorted(s)
            for x in range(len(ordered)):
                for y in range(x + 1, len(ordered)):
                    pairs[(ordered[x], ordered[y])] = pairs.get((ordered[x], ordered[y]), 0) + 1
    return dup, hist, pairs


def febrl_recall(a, b, links, keys: Sequence[str]) -> float:
    """Share of FEBRL4's true A-B pairs that share at least one key value (in the clear)."""
    from fedaudit.node.ring.keys import Identity

    def ident(r) -> Identity:
        def text(v):
            return v if isinstance(v, str) else None

        return Identity.of(
            text(r["given_name"]),
            text(r["surname"]),
            text(r["date_of_birth"]),
            text(r["soc_sec_id"]),
        )

    found = 0
    for ia, ib in links:
        x, y = ident(a.loc[ia]), ident(b.loc[ib])
        if any((vx := key_value(x, k)) is not None and vx == key_value(y, k) for k in keys):
            found += 1
    return found / len(links)


def persons_of(engine) -> list[PersonInput]:
    return load_persons(engine)[2]


@dataclass
class TallySpy:
    """What the in-process tally nodes counted: the exact counts never leave a node, so the
    tests that compare them with a clear-text oracle read them where they are made."""

    tallies: list[tuple[list[LabelledRow], DedupCounts]]

    @property
    def counts(self) -> DedupCounts:
        assert self.tallies, "no tally node counted anything"
        return self.tallies[-1][1]

    @property
    def rows(self) -> list[LabelledRow]:
        return self.tallies[-1][0]


def spy_on_tally(monkeypatch) -> TallySpy:
    """Record the rows and exact counts of every tally made by nodes in this process."""
    from fedaudit.node.ring import service

    spy = TallySpy([])
    real = service.count_rows

    def recording(rows, municipalities, keys):
        counts = real(rows, municipalities, keys)
        spy.tallies.append((list(rows), counts))
        return counts

    monkeypatch.setattr(service, "count_rows", recording)
    return spy


def release_as_tallied(plan, config, municipalities, counts, per_test_confidence=None):
    """Exact counts released as a tally node releases them, then taken up by the coordinator
    (for the tests of the releases and findings, which need no ring)."""
    from fedaudit.common.ring_protocol import TallyResult
    from fedaudit.common.ring_releases import noisy_releases
    from fedaudit.coordinator.ring.release import releases_from_tally

    params = config.params(plan.mechanism)
    tally = TallyResult(
        municipalities[0], counts.occupations, noisy_releases(counts, params, municipalities)
    )
    return releases_from_tally(
        plan, config, params, municipalities, tally, per_test_confidence=per_test_confidence
    )
