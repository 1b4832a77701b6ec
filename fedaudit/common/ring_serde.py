"""Conversions between DedupNode wire messages (fedaudit.wire.v1.dedup) and ring values.

The node's servicer reads requests and writes batches with these; the coordinator's
gRPC transport writes requests and relays batches with the same functions, so a
field added to the ring protocol is handled in one place.
"""

from __future__ import annotations

from fedaudit.common.ring_protocol import (
    BatchHeader,
    BatchPart,
    BatchTrailer,
    JoinInfo,
    RingParams,
    RosterEntry,
    TallyRelease,
    TallyResult,
)
from fedaudit.wire.v1 import dedup_pb2 as pb


def part_to_pb(part: BatchPart) -> pb.DedupBatchPart:
    if isinstance(part, BatchHeader):
        return pb.DedupBatchPart(
            header=pb.DedupBatchHeader(
                run_id=part.run_id,
                origin=part.origin,
                hop=part.hop,
                rows=part.rows,
                sender=part.sender,
            )
        )
    if isinstance(part, BatchTrailer):
        return pb.DedupBatchPart(
            trailer=pb.DedupBatchTrailer(digest=part.digest, signature=part.signature)
        )
    return pb.DedupBatchPart(chunk=part)


def part_from_pb(message: pb.DedupBatchPart) -> BatchPart:
    which = message.WhichOneof("part")
    if which == "header":
        h = message.header
        return BatchHeader(
            run_id=h.run_id, origin=h.origin, hop=h.hop, rows=h.rows, sender=h.sender
        )
    if which == "trailer":
        return BatchTrailer(digest=message.trailer.digest, signature=message.trailer.signature)
    return bytes(message.chunk)


def roster_from_pb(entries: list[pb.DedupRosterEntry]) -> list[RosterEntry]:
    return [
        RosterEntry(
            municipality_code=e.municipality_code,
            signing_key=bytes(e.signing_key),
            box_key=bytes(e.box_key),
            box_key_signature=bytes(e.box_key_signature),
            certificate=bytes(e.certificate),
            membership_signature=bytes(e.membership_signature),
        )
        for e in entries
    ]


def roster_to_pb(roster: list[RosterEntry]) -> list[pb.DedupRosterEntry]:
    return [
        pb.DedupRosterEntry(
            municipality_code=e.municipality_code,
            signing_key=e.signing_key,
            box_key=e.box_key,
            box_key_signature=e.box_key_signature,
            certificate=e.certificate,
            membership_signature=e.membership_signature,
        )
        for e in roster
    ]


def join_to_pb(info: JoinInfo) -> pb.DedupJoinResponse:
    return pb.DedupJoinResponse(
        municipality_code=info.municipality_code,
        signing_key=info.signing_key,
        box_key=info.box_key,
        box_key_signature=info.box_key_signature,
        certificate=info.certificate,
        membership_signature=info.membership_signature,
    )


def join_from_pb(r: pb.DedupJoinResponse) -> JoinInfo:
    return JoinInfo(
        municipality_code=r.municipality_code,
        signing_key=bytes(r.signing_key),
        box_key=bytes(r.box_key),
        box_key_signature=bytes(r.box_key_signature),
        certificate=bytes(r.certificate),
        membership_signature=bytes(r.membership_signature),
    )


def params_from_pb(p: pb.DedupParams) -> RingParams:
    return RingParams(
        keys=tuple(p.keys),
        bound=p.bound,
        shopping=p.shopping,
        revoked=p.revoked,
        rho=p.rho,
        epsilon=p.epsilon or None,
    )


def params_to_pb(p: RingParams) -> pb.DedupParams:
    return pb.DedupParams(
        keys=list(p.keys),
        bound=p.bound,
        shopping=p.shopping,
        revoked=p.revoked,
        rho=p.rho,
        epsilon=p.epsilon or 0.0,
    )


def tally_to_pb(result: TallyResult) -> pb.DedupTallyResponse:
    return pb.DedupTallyResponse(
        municipality_code=result.municipality_code,
        occupations=list(result.occupations),
        releases=[
            pb.DedupRelease(name=r.name, values=list(r.values), scale=r.scale)
            for r in result.releases
        ],
        signature=result.signature,
    )


def tally_from_pb(r: pb.DedupTallyResponse) -> TallyResult:
    return TallyResult(
        municipality_code=r.municipality_code,
        occupations=tuple(r.occupations),
        releases=tuple(
            TallyRelease(name=x.name, values=tuple(x.values), scale=x.scale) for x in r.releases
        ),
        signature=r.signature,
    )
