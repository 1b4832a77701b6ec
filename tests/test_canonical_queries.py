"""Equivalent queries replay one stored answer: no fresh noise for a respelt request.

Regression for attack 4 of issue 10: group_by in another order, a duplicated filter
key, a filter listing every key, confidence 0.9500001 or rho plus one ulp each got
fresh noise at full charge. Against a real node over gRPC with mTLS.
"""

from __future__ import annotations

import math

import pytest

from fedaudit.node.domain import Mechanism, QuerySpec
from fedaudit.node.query.canonical import SIGNIFICANT_DIGITS, quantise

BOARD = "oversight-board"  # conftest's MTLS_AUDITORS[0]
ISCO = ("3112", "5120", "7411")  # the fixture bundle's public isco_code keys
BASE = QuerySpec(
    "certificates_issued",
    group_by=("isco_code", "period"),
    filters={"sex": ("female", "male")},
    rho=0.05,
)


def _as_dict(answer) -> dict[tuple[tuple[str, ...], str], int]:
    return {(c.keys, c.category): c.estimate for c in answer.cells}


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        (
            "group_by in another order",
            QuerySpec(**{**BASE.__dict__, "group_by": ("period", "isco_code")}),
        ),
        (
            "a duplicated filter key",
            QuerySpec(**{**BASE.__dict__, "filters": {"sex": ("male", "female", "male")}}),
        ),
        (
            "a filter naming every key",
            QuerySpec(
                **{**BASE.__dict__, "filters": {"sex": ("female", "male"), "isco_code": ISCO}}
            ),
        ),
        ("confidence 0.9500001", QuerySpec(**{**BASE.__dict__, "confidence": 0.9500001})),
        ("rho plus one ulp", QuerySpec(**{**BASE.__dict__, "rho": math.nextafter(0.05, 1.0)})),
    ],
)
def test_an_equivalent_request_replays_the_stored_answer(connect, mtls_node, name, variant) -> None:
    board = connect(BOARD)
    first, _ = board.query(BASE, "first", timeout=10)
    assert not first.replayed
    pre = board.preflight(variant, "second", timeout=10)
    assert pre.replay, name
    assert pre.charge.rho == 0.0
    second, budget = board.query(variant, "second", timeout=10)
    assert second.replayed, name
    assert budget is not None
    assert budget.requester_rho_spent == pytest.approx(0.05)  # charged once
    # The same released numbers, shown as the variant asked for them.
    assert second.group_by == variant.group_by
    reorder = [BASE.group_by.index(dim) for dim in variant.group_by]
    expected = {
        (tuple(keys[i] for i in reorder), category): value
        for (keys, category), value in _as_dict(first).items()
    }
    assert _as_dict(second) == expected
    assert second.noise.scale == first.noise.scale
    assert second.noise.ci_level == variant.confidence


def test_cells_follow_the_requested_group_by_order(connect, mtls_node) -> None:
    """A replay in another group_by order lists cells in that order's product order."""
    board = connect(BOARD)
    board.query(BASE, "a", timeout=10)
    swapped, _ = board.query(
        QuerySpec(**{**BASE.__dict__, "group_by": ("period", "isco_code")}), "b", timeout=10
    )
    groups = []
    for cell in swapped.cells:
        if cell.keys not in groups:
            groups.append(cell.keys)
    periods = mtls_node.service.capabilities(BOARD).dimensions["period"]
    assert groups == [(p, i) for p in periods for i in ISCO]
    categories = [c.category for c in swapped.cells[: len(swapped.categories)]]
    assert categories == list(swapped.categories)  # template order within each group


def test_a_different_request_is_charged_again(connect) -> None:
    """Only equivalent spellings replay: another rho or another filter is a new release."""
    board = connect(BOARD)
    board.query(BASE, "a", timeout=10)
    for rid, spec in [
        ("more-rho", QuerySpec(**{**BASE.__dict__, "rho": 0.06})),
        ("narrower", QuerySpec(**{**BASE.__dict__, "filters": {"sex": ("female",)}})),
        (
            "laplace",
            QuerySpec(
                **{
                    **BASE.__dict__,
                    "rho": None,
                    "epsilon": 0.3,
                    "mechanism": Mechanism.DISCRETE_LAPLACE,
                }
            ),
        ),
    ]:
        answer, _ = board.query(spec, rid, timeout=10)
        assert not answer.replayed, rid


def test_quantise_keeps_significant_digits() -> None:
    assert quantise(0.05) == 0.05
    assert quantise(math.nextafter(0.05, 1.0)) == 0.05
    assert quantise(0.1 / 3) == 0.0333333
    assert quantise(0.123456789) == 0.123457
    assert quantise(None) is None
    assert SIGNIFICANT_DIGITS == 6
