"""Conversions between wire messages (fedaudit.wire.v1) and the node's domain values.

Both sides of the protocol use these: the node's servicer to answer, the
coordinator's gRPC transport to read answers. Keeping them in one place means a
field added to the protocol is handled once.
"""

from __future__ import annotations

import dataclasses

from fedaudit.node.domain import (
    Answer,
    BudgetStatus,
    Cell,
    Charge,
    LogHead,
    Mechanism,
    NoiseSpec,
    Preflight,
    QuerySpec,
)
from fedaudit.wire.v1 import node_pb2 as pb

_MECHANISM_TO_PB = {
    Mechanism.DISCRETE_GAUSSIAN: pb.DISCRETE_GAUSSIAN,
    Mechanism.DISCRETE_LAPLACE: pb.DISCRETE_LAPLACE,
}
_MECHANISM_FROM_PB = {v: k for k, v in _MECHANISM_TO_PB.items()}


class WireFormatError(ValueError):
    """A message that cannot be a valid request (e.g. no mechanism)."""


def mechanism_to_pb(mechanism: Mechanism) -> pb.Mechanism.ValueType:
    return _MECHANISM_TO_PB[mechanism]


def mechanism_from_pb(value: int) -> Mechanism:
    try:
        return _MECHANISM_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise WireFormatError(
            "mechanism must be DISCRETE_GAUSSIAN or DISCRETE_LAPLACE, "
            f"got {pb.Mechanism.Name(value) if value in pb.Mechanism.values() else value}"
        ) from None


def spec_to_pb(spec: QuerySpec, request_id: str) -> pb.QueryRequest:
    return pb.QueryRequest(
        request_id=request_id,
        template=spec.template,
        group_by=list(spec.group_by),
        filters=[pb.Filter(dimension=d, keys=list(k)) for d, k in spec.filters.items()],
        params=dict(spec.params),
        mechanism=mechanism_to_pb(spec.mechanism),
        rho=spec.rho or 0.0,
        epsilon=spec.epsilon or 0.0,
        confidence=spec.confidence,
    )


def spec_from_pb(msg: pb.QueryRequest) -> QuerySpec:
    """Read a request; semantic checks (known template, keys, ranges) are the catalogue's job."""
    filters: dict[str, tuple[str, ...]] = {}
    for f in msg.filters:
        if f.dimension in filters:
            shown = f.dimension if len(f.dimension) <= 64 else f.dimension[:64] + "..."
            raise WireFormatError(f"filter on {shown!r} given twice")
        filters[f.dimension] = tuple(f.keys)
    mechanism = mechanism_from_pb(msg.mechanism)
    return QuerySpec(
        template=msg.template,
        group_by=tuple(msg.group_by),
        filters=filters,
        params=dict(msg.params),
        mechanism=mechanism,
        # 0.0 is proto3's 'unset'; NaN is kept so validation can name it.
        rho=msg.rho or None,
        epsilon=msg.epsilon or None,
        confidence=msg.confidence if msg.confidence != 0.0 else 0.95,
    )


def noise_to_pb(noise: NoiseSpec) -> pb.NoiseSpec:
    return pb.NoiseSpec(
        mechanism=mechanism_to_pb(noise.mechanism),
        scale=noise.scale,
        variance=noise.variance,
        sensitivity_l1=noise.sensitivity_l1,
        sensitivity_l2=noise.sensitivity_l2,
        max_records_per_person=noise.max_records_per_person,
        ci_level=noise.ci_level,
        ci_half_width=noise.ci_half_width,
    )


def noise_from_pb(msg: pb.NoiseSpec) -> NoiseSpec:
    return NoiseSpec(
        mechanism=mechanism_from_pb(msg.mechanism),
        scale=msg.scale,
        variance=msg.variance,
        sensitivity_l1=msg.sensitivity_l1,
        sensitivity_l2=msg.sensitivity_l2,
        max_records_per_person=msg.max_records_per_person,
        ci_level=msg.ci_level,
        ci_half_width=msg.ci_half_width,
    )


def charge_to_pb(charge: Charge) -> pb.PrivacyCharge:
    return pb.PrivacyCharge(rho=charge.rho, epsilon=charge.epsilon or 0.0, delta=charge.delta)


def charge_from_pb(msg: pb.PrivacyCharge) -> Charge:
    return Charge(rho=msg.rho, epsilon=msg.epsilon or None, delta=msg.delta)


def budget_to_pb(budget: BudgetStatus) -> pb.Budget:
    # The wire message and the domain value have the same fields by design (an optional
    # field is left unset for None).
    fields = {k: v for k, v in dataclasses.asdict(budget).items() if v is not None}
    return pb.Budget(**fields)


def budget_from_pb(msg: pb.Budget) -> BudgetStatus:
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(BudgetStatus)}
    if not msg.HasField("ring_padding_rho"):
        fields["ring_padding_rho"] = None
    return BudgetStatus(**fields)


def answer_to_pb(answer: Answer, budget: BudgetStatus | None) -> pb.QueryResponse:
    msg = pb.QueryResponse(
        request_id=answer.request_id,
        template=answer.template,
        template_version=answer.template_version,
        catalogue_version=answer.catalogue_version,
        data_version=answer.data_version,
        group_by=list(answer.group_by),
        categories=list(answer.categories),
        cells=[
            pb.Cell(
                keys=list(c.keys), category=c.category, estimate=c.estimate, suppressed=c.suppressed
            )
            for c in answer.cells
        ],
        noise=noise_to_pb(answer.noise),
        charge=charge_to_pb(answer.charge),
        replayed=answer.replayed,
        municipality_code=answer.municipality_code,
        suppression_threshold=answer.suppression_threshold,
    )
    if budget is not None:
        msg.budget.CopyFrom(budget_to_pb(budget))
    if answer.log_head is not None:
        head = answer.log_head
        msg.log_head.CopyFrom(
            pb.LogHead(
                seq=head.seq,
                row_hash=head.row_hash,
                signature=head.signature,
                certificate=head.certificate,
            )
        )
    return msg


def answer_from_pb(msg: pb.QueryResponse) -> Answer:
    return Answer(
        request_id=msg.request_id,
        template=msg.template,
        template_version=msg.template_version,
        catalogue_version=msg.catalogue_version,
        data_version=msg.data_version,
        municipality_code=msg.municipality_code,
        group_by=tuple(msg.group_by),
        categories=tuple(msg.categories),
        cells=tuple(
            Cell(
                keys=tuple(c.keys),
                category=c.category,
                estimate=c.estimate,
                suppressed=c.suppressed,
            )
            for c in msg.cells
        ),
        noise=noise_from_pb(msg.noise),
        charge=charge_from_pb(msg.charge),
        suppression_threshold=msg.suppression_threshold,
        replayed=msg.replayed,
        log_head=(
            LogHead(
                seq=msg.log_head.seq,
                row_hash=msg.log_head.row_hash,
                signature=msg.log_head.signature,
                certificate=msg.log_head.certificate,
            )
            if msg.HasField("log_head")
            else None
        ),
    )


def preflight_to_pb(pre: Preflight) -> pb.PreflightResponse:
    return pb.PreflightResponse(
        template=pre.template,
        template_version=pre.template_version,
        noise=noise_to_pb(pre.noise),
        charge=charge_to_pb(pre.charge),
        cell_count=pre.cell_count,
        budget=budget_to_pb(pre.budget),
        fits_budget=pre.fits_budget,
        refusal_reason=pre.refusal_reason,
        refusal_message=pre.refusal_message,
        replay=pre.replay,
    )


def preflight_from_pb(msg: pb.PreflightResponse) -> Preflight:
    return Preflight(
        template=msg.template,
        template_version=msg.template_version,
        noise=noise_from_pb(msg.noise),
        charge=charge_from_pb(msg.charge),
        cell_count=msg.cell_count,
        budget=budget_from_pb(msg.budget),
        fits_budget=msg.fits_budget,
        refusal_reason=msg.refusal_reason,
        refusal_message=msg.refusal_message,
        replay=msg.replay,
    )
