"""Plain values a node's query handling passes around, free of gRPC and SQL.

The gRPC layer converts wire messages to and from these (`fedaudit.node.convert`);
an in-process transport can hand them over directly.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field


class Mechanism(enum.Enum):
    """Noise mechanisms a node offers. Both add integer noise to integer counts."""

    DISCRETE_GAUSSIAN = "discrete_gaussian"  # zCDP, charged in rho
    DISCRETE_LAPLACE = "discrete_laplace"  # pure epsilon-DP, charged as rho = eps^2 / 2


@dataclass(frozen=True)
class QuerySpec:
    """What a requester asks for: a template, its grouping and filters, and a privacy cost.

    `filters` maps a dimension to the keys kept; `rho` goes with the Gaussian
    mechanism and `epsilon` with the Laplace one.
    """

    template: str
    group_by: tuple[str, ...] = ()
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    params: Mapping[str, int] = field(default_factory=dict)
    mechanism: Mechanism = Mechanism.DISCRETE_GAUSSIAN
    rho: float | None = None
    epsilon: float | None = None
    confidence: float = 0.95

    def canonical_json(self) -> str:
        """A stable text of the query, used to recognise the identical query again."""
        return json.dumps(
            {
                "template": self.template,
                "group_by": list(self.group_by),
                "filters": {k: sorted(v) for k, v in sorted(self.filters.items())},
                "params": dict(sorted(self.params.items())),
                "mechanism": self.mechanism.value,
                "rho": self.rho,
                "epsilon": self.epsilon,
                "confidence": self.confidence,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    def query_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


@dataclass(frozen=True)
class NoiseSpec:
    """The noise every cell of an answer carries, so a coordinator can combine answers."""

    mechanism: Mechanism
    scale: float
    variance: float
    sensitivity_l1: int
    sensitivity_l2: float
    max_records_per_person: int
    ci_level: float
    ci_half_width: float


@dataclass(frozen=True)
class Charge:
    """The privacy loss a request costs: rho always, epsilon for pure-DP requests."""

    rho: float
    epsilon: float | None = None
    delta: float = 0.0


@dataclass(frozen=True)
class Cell:
    keys: tuple[str, ...]
    category: str
    estimate: int
    suppressed: bool = False


@dataclass(frozen=True)
class BudgetStatus:
    period: str
    requester_rho_cap: float
    requester_rho_spent: float
    requester_rho_remaining: float
    node_rho_cap: float
    node_rho_remaining: float
    max_rho_per_request: float
    cohort: str = ""
    """The cohort the figures are for: of the cohorts asked about, the one that binds
    (has spent most); "0000-00" stands for the earliest cohorts. Empty from old nodes."""
    ring_padding_rho: float | None = None
    """What the node charges per ring run for its DP dummy padding (0: off); None from
    nodes that do not report it."""


@dataclass(frozen=True)
class LogHead:
    """The node's query-log row that recorded a request: its seq and chain hash."""

    seq: int
    row_hash: str
    signature: bytes = b""
    """The node's ECDSA signature over `common.digest.log_head_statement` (empty when the
    node runs without a federation identity, i.e. --insecure)."""
    certificate: bytes = b""
    """The signing node's certificate (PEM), to verify `signature` against the CA."""


@dataclass(frozen=True)
class Answer:
    """A released (noisy) answer, exactly as stored in the ledger and sent on the wire."""

    request_id: str
    template: str
    template_version: str
    catalogue_version: str
    data_version: str
    municipality_code: str
    group_by: tuple[str, ...]
    categories: tuple[str, ...]
    cells: tuple[Cell, ...]
    noise: NoiseSpec
    charge: Charge
    suppression_threshold: int
    replayed: bool = False
    log_head: LogHead | None = None
    """Where the node logged this release (not part of the stored answer or its digest)."""


@dataclass(frozen=True)
class Preflight:
    """Cost and accuracy of a request, from public parameters only."""

    template: str
    template_version: str
    noise: NoiseSpec
    charge: Charge
    cell_count: int
    budget: BudgetStatus
    fits_budget: bool
    refusal_reason: str = ""
    refusal_message: str = ""
    replay: bool = False


@dataclass(frozen=True)
class TemplateInfo:
    """A catalogue template as the auditor sees it (categories with default parameters)."""

    name: str
    version: str
    description: str
    dimensions: tuple[str, ...]
    categories: tuple[str, ...]
    params: tuple[tuple[str, str, int, int, int], ...]  # name, description, min, max, default
    max_records_per_person: int


@dataclass(frozen=True)
class Capabilities:
    """The node's policy as one requester may see it. Public information only."""

    municipality_code: str
    municipality_name: str
    country: str
    catalogue_version: str
    data_version: str
    dimensions: Mapping[str, tuple[str, ...]]
    dimension_descriptions: Mapping[str, str]
    templates: tuple[TemplateInfo, ...]
    mechanisms: tuple[Mechanism, ...]
    budget: BudgetStatus
    suppression_threshold: int
    requester: str


def answer_to_json(answer: Answer) -> str:
    """The stored form of a released answer (ledger column `answer`)."""
    return json.dumps(
        {
            "request_id": answer.request_id,
            "template": answer.template,
            "template_version": answer.template_version,
            "catalogue_version": answer.catalogue_version,
            "data_version": answer.data_version,
            "municipality_code": answer.municipality_code,
            "group_by": list(answer.group_by),
            "categories": list(answer.categories),
            "cells": [[list(c.keys), c.category, c.estimate, c.suppressed] for c in answer.cells],
            "noise": {
                "mechanism": answer.noise.mechanism.value,
                "scale": answer.noise.scale,
                "variance": answer.noise.variance,
                "sensitivity_l1": answer.noise.sensitivity_l1,
                "sensitivity_l2": answer.noise.sensitivity_l2,
                "max_records_per_person": answer.noise.max_records_per_person,
                "ci_level": answer.noise.ci_level,
                "ci_half_width": answer.noise.ci_half_width,
            },
            "charge": {
                "rho": answer.charge.rho,
                "epsilon": answer.charge.epsilon,
                "delta": answer.charge.delta,
            },
            "suppression_threshold": answer.suppression_threshold,
        },
        separators=(",", ":"),
    )


def answer_from_json(text: str, *, request_id: str | None = None, replayed: bool = True) -> Answer:
    """Rebuild a stored answer; a replay may carry the new request's id."""
    d = json.loads(text)
    n = d["noise"]
    return Answer(
        request_id=request_id or d["request_id"],
        template=d["template"],
        template_version=d["template_version"],
        catalogue_version=d["catalogue_version"],
        data_version=d["data_version"],
        municipality_code=d["municipality_code"],
        group_by=tuple(d["group_by"]),
        categories=tuple(d["categories"]),
        cells=tuple(Cell(tuple(k), cat, int(est), bool(sup)) for k, cat, est, sup in d["cells"]),
        noise=NoiseSpec(
            mechanism=Mechanism(n["mechanism"]),
            scale=n["scale"],
            variance=n["variance"],
            sensitivity_l1=n["sensitivity_l1"],
            sensitivity_l2=n["sensitivity_l2"],
            max_records_per_person=n["max_records_per_person"],
            ci_level=n["ci_level"],
            ci_half_width=n["ci_half_width"],
        ),
        charge=Charge(**d["charge"]),
        suppression_threshold=d["suppression_threshold"],
        replayed=replayed,
    )
