"""The gRPC boundary of the blinding ring: DedupNode messages in, `DedupService` calls out.

Like `fedaudit.node.server`, this is the only place where ring errors become gRPC
status codes (refusals carry the same google.rpc.ErrorInfo detail). Register it on a
node's server with `add_dedup_servicer(server, service)` before the server starts.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import structlog

from fedaudit.common.ring_serde import (
    join_to_pb,
    params_from_pb,
    part_from_pb,
    part_to_pb,
    roster_from_pb,
    tally_to_pb,
)
from fedaudit.node.ring.service import DedupService
from fedaudit.node.rpc.status import abort_with, checked_requester
from fedaudit.wire.v1 import dedup_pb2 as pb
from fedaudit.wire.v1 import dedup_pb2_grpc as pb_grpc

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DedupNode"].full_name


class DedupNodeServicer(pb_grpc.DedupNodeServicer):
    """Translates DedupNode calls to `DedupService` calls."""

    def __init__(self, service: DedupService) -> None:
        self._service = service

    def Join(
        self, request: pb.DedupJoinRequest, context: grpc.ServicerContext
    ) -> pb.DedupJoinResponse:
        requester = _requester(context)
        try:
            info = self._service.join(requester, request.run_id, params_from_pb(request.params))
        except Exception as exc:
            _abort(context, "Join", exc)
        return join_to_pb(info)

    def Start(
        self, request: pb.DedupStartRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DedupBatchPart]:
        requester = _requester(context)
        try:
            parts = self._service.start(
                requester, request.run_id, roster_from_pb(list(request.roster))
            )
        except Exception as exc:
            _abort(context, "Start", exc)
        for part in parts:
            yield part_to_pb(part)

    def Hop(
        self, request_iterator: Iterator[pb.DedupBatchPart], context: grpc.ServicerContext
    ) -> Iterator[pb.DedupBatchPart]:
        requester = _requester(context)
        try:
            parts = self._service.hop(requester, (part_from_pb(m) for m in request_iterator))
        except Exception as exc:
            _abort(context, "Hop", exc)
        for part in parts:
            yield part_to_pb(part)

    def Tally(
        self, request_iterator: Iterator[pb.DedupBatchPart], context: grpc.ServicerContext
    ) -> pb.DedupTallyResponse:
        requester = _requester(context)
        try:
            result = self._service.tally(requester, (part_from_pb(m) for m in request_iterator))
        except Exception as exc:
            _abort(context, "Tally", exc)
        return tally_to_pb(result)

    def Finish(
        self, request: pb.DedupFinishRequest, context: grpc.ServicerContext
    ) -> pb.DedupFinishResponse:
        requester = _requester(context)
        try:
            dropped = self._service.finish(requester, request.run_id, request.completed)
        except Exception as exc:
            _abort(context, "Finish", exc)
        return pb.DedupFinishResponse(dropped=dropped)


def _requester(context: grpc.ServicerContext) -> str:
    return checked_requester(context)


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    abort_with(context, "dedup", method, exc)


def add_dedup_servicer(server: grpc.Server, service: DedupService) -> None:
    """Register the DedupNode service on a node's gRPC server (before `server.start()`)."""
    pb_grpc.add_DedupNodeServicer_to_server(DedupNodeServicer(service), server)
