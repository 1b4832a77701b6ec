"""The coordinator's relay of the blinding ring: join, roster, batches, tally.

The coordinator holds no secret of the matching and sees no token. It asks every
node to join a run, hands out the roster (the ring order with every node's signed
per-run box key), and relays each origin's batch around the ring: origin b's batch
is blinded first by b, then by the next node, and so on, each hop sealed to the next
node. After N hops the batch is fully blinded and sealed to the run's tally node
(`ring_protocol.tally_position`, fixed by the roster digest); the coordinator hands
the tally node every final batch and gets back only noisy counts, signed with the
tally node's run key, which it checks.

This module moves batches and checks signatures and nothing else: it sees no count
and draws no noise (the tally node does, `fedaudit.common.ring_releases`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog

from fedaudit.common import ring_crypto as rc
from fedaudit.common.ring_protocol import (
    BatchHeader,
    BatchPart,
    BatchTrailer,
    JoinInfo,
    RingParams,
    RosterEntry,
    TallyResult,
    roster_digest,
    tally_position,
)
from fedaudit.common.ring_serde import (
    join_from_pb,
    params_to_pb,
    part_from_pb,
    part_to_pb,
    roster_to_pb,
    tally_from_pb,
)
from fedaudit.coordinator.errors import CoordinatorError, NodeCallError, NodeRefusedError
from fedaudit.coordinator.running.transport import (
    call_metadata,
    open_channel,
    translate_rpc_errors,
)
from fedaudit.wire.v1 import dedup_pb2 as pb
from fedaudit.wire.v1 import dedup_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (hops done, hops in total) as batches move around the ring."""


# --- transports ------------------------------------------------------------------------------


class DedupTransport(Protocol):
    """One node's DedupNode service on behalf of one requester."""

    name: str

    def join(self, run_id: str, params: RingParams, *, timeout: float) -> JoinInfo: ...

    def start(
        self, run_id: str, roster: Sequence[RosterEntry], *, timeout: float
    ) -> Iterator[BatchPart]: ...

    def hop(self, parts: Iterator[BatchPart], *, timeout: float) -> Iterator[BatchPart]: ...

    def tally(self, parts: Iterator[BatchPart], *, timeout: float) -> TallyResult: ...

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
        channel: grpc.Channel | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self._channel = (
            channel if channel is not None else open_channel(address, credentials, channel_options)
        )
        self._stub = pb_grpc.DedupNodeStub(self._channel)
        self._metadata = call_metadata(requester)

    def join(self, run_id: str, params: RingParams, *, timeout: float) -> JoinInfo:
        with translate_rpc_errors(self.name):
            r = self._stub.Join(
                pb.DedupJoinRequest(run_id=run_id, params=params_to_pb(params)),
                timeout=timeout,
                metadata=self._metadata,
            )
        return join_from_pb(r)

    def start(
        self, run_id: str, roster: Sequence[RosterEntry], *, timeout: float
    ) -> Iterator[BatchPart]:
        request = pb.DedupStartRequest(run_id=run_id, roster=roster_to_pb(list(roster)))
        with translate_rpc_errors(self.name):
            stream = self._stub.Start(request, timeout=timeout, metadata=self._metadata)
        return self._parts(stream)

    def hop(self, parts: Iterator[BatchPart], *, timeout: float) -> Iterator[BatchPart]:
        with translate_rpc_errors(self.name):
            stream = self._stub.Hop(
                (part_to_pb(p) for p in parts), timeout=timeout, metadata=self._metadata
            )
        return self._parts(stream)

    def tally(self, parts: Iterator[BatchPart], *, timeout: float) -> TallyResult:
        with translate_rpc_errors(self.name):
            r = self._stub.Tally(
                (part_to_pb(p) for p in parts), timeout=timeout, metadata=self._metadata
            )
        return tally_from_pb(r)

    def finish(self, run_id: str, completed: bool, *, timeout: float) -> bool:
        with translate_rpc_errors(self.name):
            r = self._stub.Finish(
                pb.DedupFinishRequest(run_id=run_id, completed=completed),
                timeout=timeout,
                metadata=self._metadata,
            )
        return r.dropped

    def _parts(self, stream: Any) -> Iterator[BatchPart]:
        with translate_rpc_errors(self.name):
            for message in stream:
                yield part_from_pb(message)

    def close(self) -> None:
        self._channel.close()


# --- the ring --------------------------------------------------------------------------------


class RingFailedError(CoordinatorError):
    """The ring could not be completed; `reason` is the sentence for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RingResult:
    """What the relay ends with: the tally node's noisy counts, and who took part.

    `rows` are the padded row counts per origin that the batch headers carry (DP, the
    nodes' dummy padding); `scalar_mults` is derived from the sealed batches' sizes.
    """

    municipalities: tuple[str, ...]
    tally: TallyResult
    refused: dict[str, str]
    rows: dict[str, int]
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
        roster = [joined[name].roster_entry() for name in order]
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

        def relay(b: int) -> list[BatchPart]:
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
                return _receive(stream, roster, b)
            except NodeCallError as exc:
                culprit = upstream[0] if upstream else exc
                raise RingFailedError(
                    f"node {culprit.node} dropped out of the ring while relaying the batch of "
                    f"{origin_name}: {_why(culprit)}"
                ) from exc

        batches: list[list[BatchPart]] = []
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="ring") as pool:
            results = [pool.submit(relay, b) for b in range(n)]
            errors = []
            for fut in results:
                try:
                    batches.append(fut.result())
                except RingFailedError as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        seconds = time.monotonic() - started
        teller = tally_position(digest, n)
        tally = _tally(transports[order[teller]], batches, run_id, digest, roster[teller], left())
        completed = True
        rows = {b[0].origin: b[0].rows for b in batches if isinstance(b[0], BatchHeader)}
        tokens = sum(_tokens(b) for b in batches)
        log.info("dedup.ring_done", run_id=run_id, nodes=n, seconds=seconds)
        return RingResult(
            municipalities=tuple(joined[name].municipality_code for name in order),
            tally=tally,
            refused=refused,
            rows=rows,
            scalar_mults=tokens * n,
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


def _receive(stream: Iterator[BatchPart], roster: Sequence[RosterEntry], b: int) -> list[BatchPart]:
    """Check that the last hop of origin b's batch kept to the schedule; keep it sealed.

    The chunks are sealed to the tally node: the coordinator cannot read them, and the
    tally node checks the digest and the last sender's signature.
    """
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
        or not all(isinstance(p, bytes) for p in parts[1:-1])
    ):
        raise RingFailedError(f"the batch of {origin} came back off schedule")
    return parts


def _tally(  # noqa: PLR0917 (one call's pieces)
    transport: DedupTransport,
    batches: Sequence[Sequence[BatchPart]],
    run_id: str,
    digest: bytes,
    teller: RosterEntry,
    timeout: float,
) -> TallyResult:
    """Hand the tally node every final batch; accept only its signed noisy counts."""
    parts = (p for batch in batches for p in batch)
    try:
        result = transport.tally(parts, timeout=timeout)
    except NodeCallError as exc:
        raise RingFailedError(
            f"the tally node {exc.node} could not count the run: {_why(exc)}"
        ) from exc
    try:
        if result.municipality_code != teller.municipality_code:
            raise rc.RingCryptoError("the answer names another municipality")
        rc.verify(teller.signing_key, result.statement(run_id, digest), result.signature)
    except rc.RingCryptoError as exc:
        raise RingFailedError(
            f"the tally of {teller.municipality_code} failed verification: {exc}"
        ) from exc
    return result


def _tokens(batch: Sequence[BatchPart]) -> int:
    """Tokens in a sealed batch, from its size (each row: a header and 32-byte tokens)."""
    header = batch[0]
    rows = header.rows if isinstance(header, BatchHeader) else 0
    plain = sum(len(p) - rc.SEAL_OVERHEAD for p in batch if isinstance(p, bytes))
    return max(0, plain - rows * rc.ROW_HEADER_BYTES) // rc.POINT_BYTES


def _why(exc: NodeCallError) -> str:
    if isinstance(exc, NodeRefusedError):
        return f"refused ({exc.reason}): {exc.message}"
    return exc.message


def _listing(refused: Mapping[str, str]) -> str:
    if not refused:
        return ""
    return "; " + "; ".join(f"{k}: {v}" for k, v in sorted(refused.items()))
