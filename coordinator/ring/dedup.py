"""The coordinator's side of the blinding ring: relay, count, release with DP, report.

The coordinator holds no secret of the matching. It asks every node to join a run,
hands out the roster (the ring order with every node's signed per-run box key), and
relays each origin's batch around the ring: origin b's batch is blinded first by b,
then by the next node, and so on, each hop sealed to the next node; after N hops the
coordinator receives fully blinded tokens `H(k)^(a1...aN)`, labelled by origin only.

Counting is a union-find over person rows that share any identity token (record-level
OR across keys). It yields, per component, the municipalities where the person was
certified; the shopping check compares, inside a component, a pass month token of one
municipality with the fail window tokens of another; certificate rows match a
recognised certificate with a revoked origin certificate. Exact counts never leave
this module: only DP releases do (OpenDP, via `fedaudit.common.mechanisms`), with
sensitivities derived from the number of keys m and the per-person bound R (see
`sensitivities`), charged to the run's budget, which the outcome reports.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import structlog

from fedaudit.common import ring_crypto as rc
from fedaudit.common.mechanisms import add_noise, plan_noise
from fedaudit.coordinator.errors import CoordinatorError, NodeCallError, NodeRefusedError
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.running.transport import (
    _translate_refusals,
    _translate_rpc_errors,
    call_metadata,
    open_channel,
)
from fedaudit.node.domain import Mechanism
from fedaudit.node.ring.keys import NAME_KEYS, SHOPPING_WINDOW_MONTHS
from fedaudit.node.ring.server import params_to_pb, part_from_pb, part_to_pb
from fedaudit.node.ring.service import (
    BatchHeader,
    BatchPart,
    BatchTrailer,
    DedupService,
    JoinInfo,
    RingParams,
    RosterEntry,
    roster_digest,
)
from fedaudit.wire.v1 import dedup_pb2 as pb
from fedaudit.wire.v1 import dedup_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

FAIL_WINDOW = SHOPPING_WINDOW_MONTHS + 1

ProgressCallback = Callable[[int, int], None]
"""Called with (hops done, hops in total) as batches move around the ring."""


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DedupConfig:
    """The `duplicates` check: its privacy cost and what the ring matches on."""

    rho: float | None = 0.4
    epsilon: float | None = None
    keys: tuple[str, ...] = NAME_KEYS
    bound: int = 2
    shopping: bool = True
    revoked: bool = True
    min_nodes: int = 2


def config_from_plan(plan: AuditPlan) -> DedupConfig | None:
    """The ring's configuration from the plan's `duplicates` check, or None when absent."""
    check = plan.checks.duplicates
    if check is None:
        return None
    return DedupConfig(
        rho=check.budget.rho,
        epsilon=check.budget.epsilon,
        keys=check.keys,
        bound=check.bound,
        shopping=check.shopping,
        revoked=check.revoked,
    )


# --- transports ------------------------------------------------------------------------------


class DedupTransport(Protocol):
    """One node's DedupNode service on behalf of one requester."""

    name: str

    def join(self, run_id: str, params: RingParams, *, timeout: float) -> JoinInfo: ...

    def start(
        self, run_id: str, roster: Sequence[RosterEntry], *, timeout: float
    ) -> Iterator[BatchPart]: ...

    def hop(self, parts: Iterator[BatchPart], *, timeout: float) -> Iterator[BatchPart]: ...

    def finish(self, run_id: str, completed: bool, *, timeout: float) -> bool: ...


class GrpcDedupTransport:
    """DedupNode over gRPC; batches stream through the coordinator without being buffered."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        requester: str,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: list[tuple[str, object]] | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self._channel = open_channel(address, credentials, channel_options)
        self._stub = pb_grpc.DedupNodeStub(self._channel)
        self._metadata = call_metadata(requester)

    def join(self, run_id: str, params: RingParams, *, timeout: float) -> JoinInfo:
        with _translate_rpc_errors(self.name):
            r = self._stub.Join(
                pb.DedupJoinRequest(run_id=run_id, params=params_to_pb(params)),
                timeout=timeout,
                metadata=self._metadata,
            )
        return JoinInfo(
            municipality_code=r.municipality_code,
            signing_key=bytes(r.signing_key),
            box_key=bytes(r.box_key),
            box_key_signature=bytes(r.box_key_signature),
            rows=r.rows,
        )

    def start(
        self, run_id: str, roster: Sequence[RosterEntry], *, timeout: float
    ) -> Iterator[BatchPart]:
        request = pb.DedupStartRequest(
            run_id=run_id,
            roster=[
                pb.DedupRosterEntry(
                    municipality_code=e.municipality_code,
                    signing_key=e.signing_key,
                    box_key=e.box_key,
                    box_key_signature=e.box_key_signature,
                )
                for e in roster
            ],
        )
        with _translate_rpc_errors(self.name):
            stream = self._stub.Start(request, timeout=timeout, metadata=self._metadata)
        return self._parts(stream)

    def hop(self, parts: Iterator[BatchPart], *, timeout: float) -> Iterator[BatchPart]:
        with _translate_rpc_errors(self.name):
            stream = self._stub.Hop(
                (part_to_pb(p) for p in parts), timeout=timeout, metadata=self._metadata
            )
        return self._parts(stream)

    def finish(self, run_id: str, completed: bool, *, timeout: float) -> bool:
        with _translate_rpc_errors(self.name):
            r = self._stub.Finish(
                pb.DedupFinishRequest(run_id=run_id, completed=completed),
                timeout=timeout,
                metadata=self._metadata,
            )
        return r.dropped

    def _parts(self, stream: Any) -> Iterator[BatchPart]:
        with _translate_rpc_errors(self.name):
            for message in stream:
                yield part_from_pb(message)

    def close(self) -> None:
        self._channel.close()


class InProcessDedupTransport:
    """Calls a `DedupService` directly (unit tests and single-process demos)."""

    def __init__(self, name: str, service: DedupService, *, requester: str) -> None:
        self.name = name
        self.address = f"in-process:{name}"
        self._service = service
        self._requester = requester

    def join(self, run_id: str, params: RingParams, *, timeout: float) -> JoinInfo:
        with _translate_refusals(self.name):
            return self._service.join(self._requester, run_id, params)

    def start(
        self, run_id: str, roster: Sequence[RosterEntry], *, timeout: float
    ) -> Iterator[BatchPart]:
        with _translate_refusals(self.name):
            return iter(self._service.start(self._requester, run_id, roster))

    def hop(self, parts: Iterator[BatchPart], *, timeout: float) -> Iterator[BatchPart]:
        with _translate_refusals(self.name):
            return iter(self._service.hop(self._requester, parts))

    def finish(self, run_id: str, completed: bool, *, timeout: float) -> bool:
        with _translate_refusals(self.name):
            return self._service.finish(self._requester, run_id, completed)

    def close(self) -> None:
        pass


# --- the ring --------------------------------------------------------------------------------


class RingFailedError(CoordinatorError):
    """The ring could not be completed; `reason` is the sentence for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LabelledRow:
    origin: str
    row: rc.Row


@dataclass
class RingResult:
    """What the relay ends with: every origin's fully blinded rows, and who took part."""

    municipalities: tuple[str, ...]
    rows: list[LabelledRow]
    refused: dict[str, str]
    scalar_mults: int
    seconds: float


def run_ring(
    transports: Mapping[str, DedupTransport],
    run_id: str,
    params: RingParams,
    *,
    deadline_seconds: float = 600.0,
    min_nodes: int = 2,
    progress: ProgressCallback | None = None,
) -> RingResult:
    """Join, start and relay one run; always tells every joined node to finish.

    Nodes that refuse to join are left out (listed in `refused`); a node failing
    after the ring started fails the whole run (RingFailedError), because its batch
    and its blinding are both needed for any token to compare.
    """
    deadline = time.monotonic() + deadline_seconds

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    joined: dict[str, JoinInfo] = {}
    refused: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(transports))) as pool:
        futures = {
            name: pool.submit(t.join, run_id, params, timeout=left())
            for name, t in transports.items()
        }
        for name, fut in futures.items():
            try:
                joined[name] = fut.result()
            except NodeCallError as exc:
                refused[name] = _why(exc)
    completed = False
    try:
        if len(joined) < min_nodes:
            raise RingFailedError(
                f"only {len(joined)} node(s) joined the ring; at least {min_nodes} are needed"
                + _listing(refused)
            )
        order = sorted(joined)
        roster = [
            RosterEntry(
                municipality_code=joined[name].municipality_code,
                signing_key=joined[name].signing_key,
                box_key=joined[name].box_key,
                box_key_signature=joined[name].box_key_signature,
            )
            for name in order
        ]
        digest = roster_digest(run_id, roster)
        n = len(order)
        total_hops = n * n
        done = [0]
        done_lock = threading.Lock()
        started = time.monotonic()

        def tick() -> None:
            with done_lock:
                done[0] += 1
                if progress is not None:
                    progress(done[0], total_hops)

        def relay(b: int) -> list[LabelledRow]:
            origin_name = order[b]
            # An error inside an upstream stream surfaces at the downstream call as
            # "exception iterating requests"; the first one recorded names the culprit.
            upstream: list[NodeCallError] = []
            try:
                stream = transports[origin_name].start(run_id, roster, timeout=left())
                stream = _counted(stream, tick, upstream)
                for h in range(1, n):
                    name = order[(b + h) % n]
                    stream = _counted(transports[name].hop(stream, timeout=left()), tick, upstream)
                return _receive(stream, run_id, digest, roster, b)
            except NodeCallError as exc:
                culprit = upstream[0] if upstream else exc
                raise RingFailedError(
                    f"node {culprit.node} dropped out of the ring while relaying the batch of "
                    f"{origin_name}: {_why(culprit)}"
                ) from exc

        rows: list[LabelledRow] = []
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="ring") as pool:
            results = [pool.submit(relay, b) for b in range(n)]
            errors = []
            for fut in results:
                try:
                    rows.extend(fut.result())
                except RingFailedError as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        seconds = time.monotonic() - started
        completed = True
        mults = sum(len(r.row.tokens) for r in rows) * n
        log.info("dedup.ring_done", run_id=run_id, nodes=n, rows=len(rows), seconds=seconds)
        return RingResult(
            municipalities=tuple(joined[name].municipality_code for name in order),
            rows=rows,
            refused=refused,
            scalar_mults=mults,
            seconds=seconds,
        )
    finally:
        for name in joined:
            try:
                transports[name].finish(run_id, completed, timeout=min(5.0, left()))
            except NodeCallError:
                log.warning("dedup.finish_failed", node=name)


def _counted(
    stream: Iterator[BatchPart], tick: Callable[[], None], errors: list[NodeCallError]
) -> Iterator[BatchPart]:
    try:
        for part in stream:
            yield part
            if isinstance(part, BatchTrailer):
                tick()
    except NodeCallError as exc:
        errors.append(exc)
        raise


def _receive(
    stream: Iterator[BatchPart],
    run_id: str,
    digest: bytes,
    roster: Sequence[RosterEntry],
    b: int,
) -> list[LabelledRow]:
    """Check the last hop's header and signature and parse the fully blinded rows."""
    n = len(roster)
    parts = list(stream)
    header, trailer = parts[0] if parts else None, parts[-1] if parts else None
    origin = roster[b].municipality_code
    last = roster[(b + n - 1) % n]
    if (
        not isinstance(header, BatchHeader)
        or not isinstance(trailer, BatchTrailer)
        or header.origin != origin
        or header.hop != n
        or header.sender != last.municipality_code
    ):
        raise RingFailedError(f"the batch of {origin} came back off schedule")
    chunks = [p for p in parts[1:-1] if isinstance(p, bytes)]
    content = rc.digest_of(chunks)
    try:
        if content != trailer.digest:
            raise rc.RingCryptoError("digest mismatch")
        rc.verify(
            last.signing_key,
            rc.hop_statement(
                run_id, digest, origin=origin, hop=n, rows=header.rows, digest=content
            ),
            trailer.signature,
        )
        rows = rc.decode_rows(b"".join(chunks), header.rows)
    except rc.RingCryptoError as exc:
        raise RingFailedError(f"the batch of {origin} failed verification: {exc}") from exc
    return [LabelledRow(origin, r) for r in rows]


def _why(exc: NodeCallError) -> str:
    if isinstance(exc, NodeRefusedError):
        return f"refused ({exc.reason}): {exc.message}"
    return exc.message


def _listing(refused: Mapping[str, str]) -> str:
    if not refused:
        return ""
    return "; " + "; ".join(f"{k}: {v}" for k, v in sorted(refused.items()))


# --- counting (exact; never leaves the coordinator) ------------------------------------------


@dataclass
class DedupCounts:
    """Exact counts before noise: the internal seam tests compare with a clear-text oracle."""

    municipalities: tuple[str, ...]
    duplicated: int = 0
    per_occupation: dict[str, int] = field(default_factory=dict)
    occupations: tuple[str, ...] = ()
    overlap: dict[int, int] = field(default_factory=dict)
    pairwise: dict[tuple[str, str], int] = field(default_factory=dict)
    shopping: int = 0
    shopping_by_passing: dict[str, int] = field(default_factory=dict)
    revoked: int = 0
    revoked_by_pair: dict[tuple[str, str], int] = field(default_factory=dict)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def count_rows(
    rows: Sequence[LabelledRow], municipalities: Sequence[str], keys: int
) -> DedupCounts:
    """Union-find over person rows sharing any of their first `keys` tokens, then count."""
    counts = DedupCounts(municipalities=tuple(municipalities))
    people = [r for r in rows if r.row.kind == rc.KIND_PERSON]
    uf = _UnionFind(len(people))
    first: dict[bytes, int] = {}
    for i, r in enumerate(people):
        for token in r.row.tokens[:keys]:
            j = first.setdefault(token, i)
            if j != i:
                uf.union(j, i)
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(len(people)):
        components[uf.find(i)].append(i)
    occupations = sorted({r.row.isco_code for r in people})
    counts.occupations = tuple(occupations)
    counts.per_occupation = dict.fromkeys(occupations, 0)
    counts.shopping_by_passing = dict.fromkeys(municipalities, 0)
    for members in components.values():
        certified = sorted(
            {people[i].origin for i in members if people[i].row.flags & rc.FLAG_CERTIFIED}
        )
        if len(certified) >= 2:
            counts.duplicated += 1
            isco = people[members[0]].row.isco_code
            counts.per_occupation[isco] += 1
            counts.overlap[len(certified)] = counts.overlap.get(len(certified), 0) + 1
            for x in range(len(certified)):
                for y in range(x + 1, len(certified)):
                    pair = (certified[x], certified[y])
                    counts.pairwise[pair] = counts.pairwise.get(pair, 0) + 1
        passing = _shopping(people, members, keys)
        if passing:
            counts.shopping += 1
            for muni in passing:
                counts.shopping_by_passing[muni] += 1
    _count_certificates(rows, counts)
    return counts


def _shopping(people: Sequence[LabelledRow], members: Sequence[int], keys: int) -> set[str]:
    """Municipalities where someone in this component passed within 12 months of a fail
    in another municipality."""
    windows: dict[bytes, set[str]] = defaultdict(set)
    for i in members:
        row = people[i].row
        if row.flags & rc.FLAG_FAILED:
            for token in row.tokens[keys : keys + FAIL_WINDOW]:
                windows[token].add(people[i].origin)
    if not windows:
        return set()
    passing = set()
    for i in members:
        row = people[i].row
        if row.flags & rc.FLAG_PASSED:
            origins = windows.get(row.tokens[-1], set())
            if origins - {people[i].origin}:
                passing.add(people[i].origin)
    return passing


def _count_certificates(rows: Sequence[LabelledRow], counts: DedupCounts) -> None:
    revoked_at: dict[bytes, set[str]] = defaultdict(set)
    recognised_at: dict[bytes, set[str]] = defaultdict(set)
    for r in rows:
        if r.row.kind != rc.KIND_CERT:
            continue
        target = revoked_at if r.row.flags & rc.FLAG_REVOKED else recognised_at
        target[r.row.tokens[0]].add(r.origin)
    for token, origins in revoked_at.items():
        matched = False
        for b in recognised_at.get(token, ()):
            for a in origins:
                if a != b:
                    counts.revoked_by_pair[(b, a)] = counts.revoked_by_pair.get((b, a), 0) + 1
                    matched = True
        if matched:
            counts.revoked += 1


# --- releases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensitivity:
    l1: int
    l2: int


def sensitivities(keys: int, bound: int, nodes: int) -> dict[str, Sensitivity]:
    """Sensitivity of each release to adding or removing one person at one node.

    A person has at most R = `bound` person rows (distinct occupations, hence distinct
    components) and R certificate rows of each side. Removing one person row splits
    its component into at most m pieces (one per identity token), so a component
    count moves by at most max(1, m-1) per row; a histogram cell loses one and up to m
    pieces land in others (L1 <= m+1). Pairwise counts and per-municipality counts
    move by max(1, m-1) in each of the cells one component touches.
    """
    m, r, n = keys, bound, nodes
    c = max(1, m - 1)
    pairs = n * (n - 1) // 2
    return {
        "dup_overall": Sensitivity(r * c, r * c),
        "dup_per_occupation": Sensitivity(r * c, math.ceil(math.sqrt(r) * c)),
        "overlap": Sensitivity(r * (m + 1), math.ceil(r * math.sqrt(1 + m * m))),
        "pairwise": Sensitivity(r * c * pairs, math.ceil(r * c * math.sqrt(pairs))),
        "shopping_overall": Sensitivity(r * c, r * c),
        "shopping_by_passing": Sensitivity(r * c * n, math.ceil(r * c * math.sqrt(n))),
        "revoked_overall": Sensitivity(2 * r, 2 * r),
        "revoked_by_pair": Sensitivity(r * n, math.ceil(r * (math.sqrt(n - 1) + 1))),
    }


@dataclass(frozen=True)
class Release:
    name: str
    values: list[int]
    half_width: float
    scale: float
    rho: float
    epsilon: float | None
    sensitivity: int


class CoordinatorBudget:
    """The privacy budget the coordinator keeps for its own releases (a cap, charged in rho)."""

    def __init__(self, rho_cap: float) -> None:
        self.rho_cap = rho_cap
        self.charged: list[tuple[str, float, float | None]] = []

    @property
    def rho_spent(self) -> float:
        return math.fsum(r for _, r, _ in self.charged)

    def charge(self, name: str, rho: float, epsilon: float | None) -> None:
        if self.rho_spent + rho > self.rho_cap * (1 + 1e-9):
            raise CoordinatorError(
                f"release {name!r} (rho={rho:.4g}) exceeds the coordinator's budget "
                f"({self.rho_cap - self.rho_spent:.4g} of {self.rho_cap:.4g} left)"
            )
        self.charged.append((name, rho, epsilon))


def release(
    name: str,
    values: Sequence[int],
    sens: Sensitivity,
    mechanism: Mechanism,
    *,
    rho: float | None,
    epsilon: float | None,
    confidence: float,
    budget: CoordinatorBudget,
) -> Release:
    """Noisy `values` (OpenDP), charged to `budget` before anything is drawn."""
    gaussian = mechanism is Mechanism.DISCRETE_GAUSSIAN
    noise, charge = plan_noise(
        mechanism,
        rho=rho,
        epsilon=epsilon,
        sensitivity=sens.l2 if gaussian else sens.l1,
        confidence=confidence,
    )
    budget.charge(name, charge.rho, charge.epsilon)
    return Release(
        name=name,
        values=add_noise(noise, list(values)),
        half_width=noise.ci_half_width,
        scale=noise.scale,
        rho=charge.rho,
        epsilon=charge.epsilon,
        sensitivity=sens.l2 if gaussian else sens.l1,
    )


# --- outcome ---------------------------------------------------------------------------------


@dataclass
class DedupOutcome:
    """The `duplicates` section, findings and metrics for report.json, and what it cost."""

    duplicates_section: dict[str, Any]
    findings: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    privacy: dict[str, Any]
    tests: int = 0
    counts: DedupCounts | None = field(default=None, repr=False)
    ring: RingResult | None = field(default=None, repr=False)


def run_dedup(
    plan: AuditPlan,
    transports: Mapping[str, DedupTransport],
    run_id: str,
    *,
    config: DedupConfig | None = None,
    progress: ProgressCallback | None = None,
    per_test_confidence: float | None = None,
) -> DedupOutcome:
    """Run the ring for `plan` and release its DP counts; never raises for node failures.

    `per_test_confidence` lets the caller put these tests into the audit's Bonferroni
    family; by default they form their own family at the plan's confidence.
    """
    config = config or config_from_plan(plan)
    if config is None:
        return DedupOutcome(
            duplicates_section=_empty("not_run", "the plan has no duplicates check"),
            findings=[],
            metrics=[],
            privacy={"rho": 0.0, "epsilon": None, "releases": []},
        )
    gaussian = plan.mechanism is Mechanism.DISCRETE_GAUSSIAN
    params = RingParams(
        keys=config.keys,
        bound=config.bound,
        shopping=config.shopping,
        revoked=config.revoked,
        rho=config.rho if gaussian else (config.epsilon or 0.0) ** 2 / 2,
        epsilon=None if gaussian else config.epsilon,
    )
    try:
        ring = run_ring(
            transports,
            run_id,
            params,
            deadline_seconds=max(plan.deadline_seconds, 60.0) * 10,
            min_nodes=max(2, config.min_nodes),
            progress=progress,
        )
    except RingFailedError as exc:
        log.warning("dedup.failed", run_id=run_id)
        return DedupOutcome(
            duplicates_section=_empty("failed", exc.reason),
            findings=[],
            metrics=[],
            privacy={"rho": 0.0, "epsilon": None, "releases": []},
        )
    counts = count_rows(ring.rows, ring.municipalities, len(config.keys))
    return _release_all(plan, config, ring, counts, per_test_confidence)


def _empty(status: str, reason: str) -> dict[str, Any]:
    return {
        "status": status,
        "reason": reason,
        "overall": None,
        "per_occupation": [],
        "overlap_histogram": [],
        "pairwise": [],
    }


def _release_all(
    plan: AuditPlan,
    config: DedupConfig,
    ring: RingResult,
    counts: DedupCounts,
    per_test_confidence: float | None,
) -> DedupOutcome:
    munis = ring.municipalities
    n = len(munis)
    occs = counts.occupations
    ordered_pairs = [(b, a) for b in munis for a in munis if a != b]
    pairs = [(munis[i], munis[j]) for i in range(n) for j in range(i + 1, n)]
    # Findings are tested on the overall counts only; the breakdowns (per occupation,
    # per municipality, per pair) are reported with plain intervals to locate them. Fewer
    # tests keep the Bonferroni correction from eating the signal of small counts.
    tests = 1 + int(config.shopping) + int(config.revoked)
    confidence = per_test_confidence or 1.0 - (1.0 - plan.confidence) / tests
    sens = sensitivities(len(config.keys), config.bound, n)
    vectors: dict[str, list[int]] = {
        "dup_overall": [counts.duplicated],
        "dup_per_occupation": [counts.per_occupation[o] for o in occs],
        "overlap": [counts.overlap.get(k, 0) for k in range(2, n + 1)],
        "pairwise": [counts.pairwise.get(p, 0) for p in pairs],
    }
    if config.shopping:
        vectors["shopping_overall"] = [counts.shopping]
        vectors["shopping_by_passing"] = [counts.shopping_by_passing.get(m, 0) for m in munis]
    if config.revoked:
        vectors["revoked_overall"] = [counts.revoked]
        vectors["revoked_by_pair"] = [counts.revoked_by_pair.get(p, 0) for p in ordered_pairs]
    gaussian = plan.mechanism is Mechanism.DISCRETE_GAUSSIAN
    budget = CoordinatorBudget(
        config.rho if gaussian and config.rho else (config.epsilon or 0.0) ** 2 / 2
    )
    # The tested overall counts get three shares of the budget each, the breakdowns one.
    weights = {name: 3.0 if name.endswith("_overall") else 1.0 for name in vectors}
    total_weight = math.fsum(weights.values())
    if not gaussian:
        # Pure-DP releases compose linearly in epsilon; the cap is on their rho images.
        budget.rho_cap = math.fsum(
            ((config.epsilon or 0.0) * w / total_weight) ** 2 / 2 for w in weights.values()
        )
    released: dict[str, Release] = {}
    for name, values in vectors.items():
        share = weights[name] / total_weight
        released[name] = release(
            name,
            values,
            sens[name],
            plan.mechanism,
            rho=config.rho * share if gaussian and config.rho else None,
            epsilon=None if gaussian else (config.epsilon or 0.0) * share,
            confidence=confidence if name.endswith("_overall") else plan.confidence,
            budget=budget,
        )

    def ewc(rel: Release, i: int) -> dict[str, Any]:
        v = float(rel.values[i])
        return {"estimate": v, "ci": [v - rel.half_width, v + rel.half_width]}

    dup_overall = ewc(released["dup_overall"], 0)
    status = "partial" if ring.refused else "complete"
    reason = ""
    if ring.refused:
        reason = "counts cover the nodes that joined; " + "; ".join(
            f"{k}: {v}" for k, v in sorted(ring.refused.items())
        )
    section = {
        "status": status,
        "reason": reason,
        "overall": dup_overall,
        "per_occupation": [
            {"isco_code": o, **ewc(released["dup_per_occupation"], i)} for i, o in enumerate(occs)
        ],
        "overlap_histogram": [
            {"k": k, **ewc(released["overlap"], i)} for i, k in enumerate(range(2, n + 1))
        ],
        "pairwise": [
            {"a": a, "b": b, **ewc(released["pairwise"], i)} for i, (a, b) in enumerate(pairs)
        ],
    }
    builder = _Findings(confidence)
    builder.add(
        "cross_municipality_duplicates",
        "duplicated_persons",
        "Persons certified for the same occupation in two or more municipalities",
        {"municipality": None, "isco_code": None},
        dup_overall,
        severity="warning",
        phrase="persons were certified for the same occupation in two or more municipalities",
    )
    for i, o in enumerate(occs):
        builder.add(
            "cross_municipality_duplicates",
            "duplicated_persons",
            "Persons certified for the same occupation in two or more municipalities",
            {"municipality": None, "isco_code": o},
            ewc(released["dup_per_occupation"], i),
            severity="warning",
            tested=False,
            phrase=f"persons were certified for ISCO {o} in two or more municipalities",
        )
    if config.shopping:
        label = "Persons who passed within 12 months of failing the same occupation elsewhere"
        builder.add(
            "assessment_shopping",
            "assessment_shopping",
            label,
            {"municipality": None},
            ewc(released["shopping_overall"], 0),
            severity="warning",
            phrase="persons passed an assessment within 12 months of failing it in another municipality",
        )
        for i, m in enumerate(munis):
            builder.add(
                "assessment_shopping",
                "assessment_shopping",
                label,
                {"municipality": m, "other_municipality": None},
                ewc(released["shopping_by_passing"], i),
                severity="warning",
                tested=False,
                phrase=f"persons passed in {m} within 12 months of failing the same occupation "
                "in another municipality",
            )
    if config.revoked:
        label = "Reciprocity certificates still valid whose origin certificate is revoked"
        builder.add(
            "revoked_still_recognised",
            "revoked_still_recognised",
            label,
            {"municipality": None},
            ewc(released["revoked_overall"], 0),
            severity="critical",
            phrase="reciprocity certificates are still valid although the origin certificate is revoked",
        )
        for i, (b, a) in enumerate(ordered_pairs):
            builder.add(
                "revoked_still_recognised",
                "revoked_still_recognised",
                label,
                {"municipality": b, "other_municipality": a},
                ewc(released["revoked_by_pair"], i),
                severity="critical",
                tested=False,
                phrase=f"certificates recognised in {b} are still valid although {a} revoked the "
                "origin certificate",
            )
    privacy = {
        "rho": budget.rho_spent,
        "epsilon": (math.fsum(e for _, _, e in budget.charged if e) if not gaussian else None),
        "rho_cap": budget.rho_cap,
        "mechanism": plan.mechanism.value,
        "releases": [
            {
                "name": r.name,
                "cells": len(r.values),
                "sensitivity": r.sensitivity,
                "scale": r.scale,
                "rho": r.rho,
                "epsilon": r.epsilon,
            }
            for r in released.values()
        ],
        "note": (
            "Charged by the coordinator for its own releases of the ring's counts; every "
            "node that joined charged the same amount to its ledger for its registry's persons."
        ),
    }
    return DedupOutcome(
        duplicates_section=section,
        findings=builder.findings,
        metrics=builder.metrics,
        privacy=privacy,
        tests=tests,
        counts=counts,
        ring=ring,
    )


class _Findings:
    """Builds metrics (every tested estimate) and findings (interval above zero)."""

    def __init__(self, confidence: float) -> None:
        self.confidence = confidence
        self.metrics: list[dict[str, Any]] = []
        self.findings: list[dict[str, Any]] = []

    def add(
        self,
        kind: str,
        metric: str,
        label: str,
        subject: dict[str, Any],
        value: dict[str, Any],
        *,
        severity: str,
        phrase: str,
        tested: bool = True,
    ) -> None:
        self.metrics.append(
            {
                "id": f"M{9001 + len(self.metrics):04d}",
                "metric": metric,
                "label": label,
                "unit": "count",
                "subject": subject,
                "estimate": value["estimate"],
                "ci": value["ci"],
                "denominator": None,
                "reference": None,
                "tested": tested,
                "note": (
                    "DP count from the blinding ring; a finding when its interval excludes zero"
                    if tested
                    else "DP count from the blinding ring (breakdown, not tested)"
                ),
            }
        )
        low, high = value["ci"]
        if not tested or low <= 0:
            return
        self.findings.append(
            {
                "id": f"F{901 + len(self.findings):03d}",
                "kind": kind,
                "subject": subject,
                "metric": metric,
                "estimate": value["estimate"],
                "ci": value["ci"],
                "reference": {"description": "zero", "estimate": None, "ci": None},
                "gap": None,
                "gap_ci": None,
                "tolerance": None,
                "severity": severity,
                "summary": (
                    f"About {value['estimate']:.0f} {phrase} "
                    f"({self.confidence:.1%} interval {low:.0f} to {high:.0f})."
                ),
            }
        )
