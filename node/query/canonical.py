"""Canonical queries: equivalent requests get one replay key, and so one stored answer.

The node replays a stored answer to a requester who asks the same question again
on the same data, so repeating a query to average its noise away gains nothing.
"The same question" must not mean "the same bytes": a requester could otherwise
spell one query many ways (group_by in another order, a filter key repeated, a
filter naming every key of its dimension, rho one ulp higher, another confidence
level) and get fresh noise for each. So before the replay lookup a request is
reduced to its canonical form:

- group_by in the template's dimension order;
- each filter's keys de-duplicated, in the public key list's order, and a filter
  naming every public key of its dimension dropped (outside the window dimensions
  such a filter restricts nothing, see `catalogue.WINDOW_DIMENSIONS`; for a window
  dimension the public list is the window itself, applied with or without filter);
- template parameters resolved (a default given explicitly equals one left out);
- rho or epsilon rounded to `SIGNIFICANT_DIGITS` significant digits (the request is
  then answered and charged at the rounded value);
- the confidence level left out: it shapes only the interval stated for noise
  already drawn, which `present` recomputes for each request.

The answer is computed for the canonical form and stored so; `present` gives each
request its own view (its group_by order, its confidence, its request id).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence

from fedaudit.common.mechanisms import with_confidence
from fedaudit.node.domain import Answer, Cell, QuerySpec
from fedaudit.node.privacy import cohorts
from fedaudit.node.query.catalogue import Template

SIGNIFICANT_DIGITS = 6
"""Privacy parameters closer than this are one request (rho 0.05 and 0.05 + 1 ulp)."""


def quantise(value: float | None) -> float | None:
    """`value` rounded to `SIGNIFICANT_DIGITS` significant digits (None stays None)."""
    if value is None or value == 0 or not math.isfinite(value):
        return value
    digits = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value)))
    return float(round(value, digits))


def canonical_spec(
    template: Template,
    spec: QuerySpec,
    keys: Mapping[str, tuple[str, ...]],
    params: Mapping[str, int],
) -> QuerySpec:
    """The canonical form of a validated request (`catalogue.validate` passed)."""
    filters: dict[str, tuple[str, ...]] = {}
    for dim in template.dimensions:
        if dim not in spec.filters:
            continue
        wanted = set(spec.filters[dim])
        kept = tuple(k for k in keys[dim] if k in wanted)
        if kept != tuple(keys[dim]):
            filters[dim] = kept
    return dataclasses.replace(
        spec,
        group_by=tuple(d for d in template.dimensions if d in spec.group_by),
        filters=filters,
        params=dict(sorted(params.items())),
        rho=quantise(spec.rho),
        epsilon=quantise(spec.epsilon),
    )


def replay_key(canonical: QuerySpec) -> str:
    """sha256 of the canonical request without its confidence level."""
    text = json.dumps(
        {
            "template": canonical.template,
            "group_by": list(canonical.group_by),
            "filters": {k: list(v) for k, v in sorted(canonical.filters.items())},
            "params": dict(sorted(canonical.params.items())),
            "mechanism": canonical.mechanism.value,
            "rho": canonical.rho,
            "epsilon": canonical.epsilon,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(f"fedaudit-query-v2\x00{text}".encode()).hexdigest()


def data_key(
    *,
    version: str,
    ranges: Sequence[tuple[str, str]],
    imports: Sequence[tuple[int, str, frozenset[str]]],
    open_months: int,
    reference_digest: str,
    reference_date: dt.date | None,
) -> str:
    """What "the same data" means for a query's replay: the public state of what it reads.

    The cohort ranges read (a query over all cohorts reads a new month once it is in
    the key list), the last import that made questions about them new (`cohorts.epoch`:
    while a cohort is open, every import; later, only an import that reopens it), the
    reference tables' digest (public reference data) and, for templates whose answers
    age with it, the reference date. Importing a new month therefore leaves questions
    about closed cohorts replayable, and a declared correction of an old cohort makes
    questions about it (only) new. Nothing here depends on the persons' records, so
    whether a query replays tells a requester nothing about them. Data imported before
    cohort accounting (no reference digest) keeps the data version as its key.
    """
    if not reference_digest:
        return version
    parts = {
        "ranges": [list(r) for r in ranges],
        "epoch": cohorts.epoch(ranges, imports, open_months),
        "reference": reference_digest,
        "reference_date": reference_date.isoformat() if reference_date is not None else "",
    }
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return "k" + hashlib.sha256(f"fedaudit-data-key-v1\x00{text}".encode()).hexdigest()[:63]


def present(
    answer: Answer,
    spec: QuerySpec,
    keys: Mapping[str, tuple[str, ...]],
    *,
    request_id: str,
    replayed: bool,
) -> Answer:
    """`answer` (as stored) as this request asked for it.

    Cell keys follow the request's group_by order and cells its product order
    (categories in template order within a group), the noise interval is stated at
    the request's confidence, and the answer carries the request's id.
    """
    if answer.group_by != tuple(spec.group_by) and set(answer.group_by) == set(spec.group_by):
        positions = [answer.group_by.index(dim) for dim in spec.group_by]
        rank = {dim: {key: i for i, key in enumerate(keys.get(dim, ()))} for dim in spec.group_by}
        category_rank = {category: i for i, category in enumerate(answer.categories)}
        cells = [
            Cell(tuple(c.keys[p] for p in positions), c.category, c.estimate, c.suppressed)
            for c in answer.cells
        ]
        cells.sort(
            key=lambda c: (
                tuple(
                    rank[dim].get(key, len(rank[dim]))
                    for dim, key in zip(spec.group_by, c.keys, strict=True)
                ),
                category_rank.get(c.category, len(category_rank)),
            )
        )
        answer = dataclasses.replace(answer, group_by=tuple(spec.group_by), cells=tuple(cells))
    return dataclasses.replace(
        answer,
        noise=with_confidence(answer.noise, spec.confidence),
        request_id=request_id,
        replayed=replayed,
    )
