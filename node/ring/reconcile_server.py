"""The gRPC boundary of revocation reconciliation: ReconcileNode messages to `ReconcileService`.

Like the other servicers, it only translates: messages to domain calls, domain
refusals to status codes with their structured reason (`node.rpc.status`).
"""

from __future__ import annotations

import grpc

from fedaudit.node.ring.reconcile import ReconcileService, SignedAnswer, SignedBatch
from fedaudit.node.rpc.status import abort_with, checked_requester
from fedaudit.wire.v1 import reconcile_pb2 as pb
from fedaudit.wire.v1 import reconcile_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ReconcileNode"].full_name


def batch_to_pb(batch: SignedBatch) -> pb.ReconcileBatch:
    return pb.ReconcileBatch(**batch.__dict__)


def batch_from_pb(message: pb.ReconcileBatch) -> SignedBatch:
    return SignedBatch(
        run_id=message.run_id,
        sender=message.sender,
        origin=message.origin,
        points=message.points,
        certificate_pem=message.certificate_pem,
        signature=message.signature,
    )


def answer_to_pb(answer: SignedAnswer) -> pb.ReconcileAnswer:
    return pb.ReconcileAnswer(**answer.__dict__)


def answer_from_pb(message: pb.ReconcileAnswer) -> SignedAnswer:
    return SignedAnswer(
        run_id=message.run_id,
        sender=message.sender,
        recipient=message.recipient,
        evaluated=message.evaluated,
        table=message.table,
        certificate_pem=message.certificate_pem,
        signature=message.signature,
    )


class ReconcileNodeServicer(pb_grpc.ReconcileNodeServicer):
    """Translates ReconcileNode calls to `ReconcileService` calls."""

    def __init__(self, service: ReconcileService) -> None:
        self._service = service

    def Ask(
        self, request: pb.ReconcileAskRequest, context: grpc.ServicerContext
    ) -> pb.ReconcileBatch:
        requester = checked_requester(context)
        try:
            return batch_to_pb(self._service.ask(requester, request.run_id, request.origin))
        except Exception as exc:
            abort_with(context, "reconcile", "Ask", exc)
            raise

    def Answer(
        self, request: pb.ReconcileBatch, context: grpc.ServicerContext
    ) -> pb.ReconcileAnswer:
        requester = checked_requester(context)
        try:
            return answer_to_pb(self._service.answer(requester, batch_from_pb(request)))
        except Exception as exc:
            abort_with(context, "reconcile", "Answer", exc)
            raise

    def Resolve(
        self, request: pb.ReconcileAnswer, context: grpc.ServicerContext
    ) -> pb.ReconcileResolveResponse:
        requester = checked_requester(context)
        try:
            self._service.resolve(requester, answer_from_pb(request))
        except Exception as exc:
            abort_with(context, "reconcile", "Resolve", exc)
            raise
        return pb.ReconcileResolveResponse()

    def Release(
        self, request: pb.ReconcileReleaseRequest, context: grpc.ServicerContext
    ) -> pb.ReconcileReleaseResponse:
        requester = checked_requester(context)
        try:
            released = self._service.release(
                requester, request.run_id, rho=request.rho, confidence=request.confidence or 0.95
            )
        except Exception as exc:
            abort_with(context, "reconcile", "Release", exc)
            raise
        return pb.ReconcileReleaseResponse(
            value=released.value,
            mechanism=released.mechanism.value,
            scale=released.scale,
            ci_half_width=released.ci_half_width,
            rho=released.rho,
            replayed=released.replayed,
        )


def add_reconcile_servicer(server: grpc.Server, service: ReconcileService) -> None:
    """Register the ReconcileNode service on a node's gRPC server (before `server.start()`)."""
    pb_grpc.add_ReconcileNodeServicer_to_server(ReconcileNodeServicer(service), server)
