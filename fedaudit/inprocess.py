"""In-process transports: a coordinator talking to node services in the same process.

They live outside `coordinator/` because they hold node objects: the coordinator
itself only knows the `NodeTransport` and `DedupTransport` interfaces and the wire, so it can never
reach into a node's database by accident. Unit tests and single-process demos
compose the two here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fedaudit.common.ring_protocol import (
    BatchPart,
    JoinInfo,
    RingParams,
    RosterEntry,
    TallyResult,
)
from fedaudit.coordinator.running.transport import NodeInfo, translate_refusals
from fedaudit.node.domain import Answer, BudgetStatus, Preflight, QuerySpec
from fedaudit.node.query.service import NodeService
from fedaudit.node.ring.service import DedupService


class InProcessNodeTransport:
    """Calls a `NodeService` directly: the audit logic without sockets, for unit tests."""

    def __init__(self, name: str, service: NodeService, *, requester: str) -> None:
        self.name = name
        self.address = f"in-process:{name}"
        self._service = service
        self._requester = requester

    def info(self, *, timeout: float) -> NodeInfo:
        with translate_refusals(self.name):
            caps = self._service.capabilities(self._requester)
        return NodeInfo(
            municipality_code=caps.municipality_code,
            municipality_name=caps.municipality_name,
            data_version=caps.data_version,
            catalogue_version=caps.catalogue_version,
            budget=caps.budget,
            templates=tuple(t.name for t in caps.templates),
        )

    def preflight(self, spec: QuerySpec, request_id: str, *, timeout: float) -> Preflight:
        with translate_refusals(self.name):
            return self._service.preflight(self._requester, spec, request_id)

    def query(
        self, spec: QuerySpec, request_id: str, *, timeout: float
    ) -> tuple[Answer, BudgetStatus | None]:
        with translate_refusals(self.name):
            answer = self._service.query(self._requester, request_id, spec)
            return answer, self._service.ledger.status(self._requester, self._service.clock())

    def close(self) -> None:
        return None


class InProcessDedupTransport:
    """Calls a `DedupService` directly (unit tests and single-process demos)."""

    def __init__(self, name: str, service: DedupService, *, requester: str) -> None:
        self.name = name
        self.address = f"in-process:{name}"
        self._service = service
        self._requester = requester

    def join(self, run_id: str, params: RingParams, *, timeout: float) -> JoinInfo:
        with translate_refusals(self.name):
            return self._service.join(self._requester, run_id, params)

    def start(
        self, run_id: str, roster: Sequence[RosterEntry], *, timeout: float
    ) -> Iterator[BatchPart]:
        with translate_refusals(self.name):
            return iter(self._service.start(self._requester, run_id, roster))

    def hop(self, parts: Iterator[BatchPart], *, timeout: float) -> Iterator[BatchPart]:
        with translate_refusals(self.name):
            return iter(self._service.hop(self._requester, parts))

    def tally(self, parts: Iterator[BatchPart], *, timeout: float) -> TallyResult:
        with translate_refusals(self.name):
            return self._service.tally(self._requester, parts)

    def finish(self, run_id: str, completed: bool, *, timeout: float) -> bool:
        with translate_refusals(self.name):
            return self._service.finish(self._requester, run_id, completed)

    def close(self) -> None:
        pass
