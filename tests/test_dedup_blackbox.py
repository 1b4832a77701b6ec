"""Black-box epsilon audit of the ring's duplicate count for a person in 1, 2 and 3 municipalities.

Same auditor as `test_dp_blackbox.py` (threshold event, Clopper-Pearson bounds at
1 - 1e-4): neighbouring federations D (without the person) and D' (with them), the
exact duplicate count from the production local merge, row building and union-find,
and the coordinator's own `release` (OpenDP discrete Laplace at the sensitivity
`sensitivities` states). The person is adversarial: spelling variants at each of
their municipalities bridge neighbours' clusters that share one token each, so the
count moves by several units. The measured lower bound must stay at or below the
claimed epsilon; the same auditor flags the former per-node bound R*max(1, m-1).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os

import pytest
from dp_audit import eps_lower_bound

from fedaudit.common.mechanisms import add_noise, plan_noise
from fedaudit.common.ring_counting import count_rows
from fedaudit.common.ring_protocol import LEGACY_NAME_KEYS, LabelledRow
from fedaudit.common.ring_releases import Sensitivity, sensitivities
from fedaudit.node.domain import Mechanism
from fedaudit.node.ring.keys import Identity, PersonInput, merge_local
from fedaudit.node.ring.rows import hashed_rows

KEYS = LEGACY_NAME_KEYS  # four tokens per row: the most bridging a person can do
CODES = ("M1", "M2", "M3")
DOB = dt.date(1985, 4, 5)
EPSILON = 1.0
PERSON = {"M1": ("Anna", "Berger"), "M2": ("Ana", "Berger"), "M3": ("Ana", "Bergmann")}
NEIGHBOURS = [  # each certified at two municipalities, each sharing one of the person's tokens
    ("Amy", "Barker", "M2", "M3"),
    ("Amy", "Brigman", "M1", "M2"),
    ("Anneliese", "Bernhard", "M2", "M3"),
    ("Anastasia", "Bernhard", "M1", "M3"),
    ("Berger", "Anna", "M2", "M3"),
    ("Bergmann", "Ana", "M1", "M2"),
]


def _person(pid: str, given: str, family: str) -> PersonInput:
    return PersonInput(
        person_id=pid,
        identity=Identity.of(given, family, DOB),
        certified={"7212": dt.date(2022, 1, 1)},
    )


def _duplicates(at: tuple[str, ...]) -> int:
    """The exact duplicate count of the neighbours plus the person at `at`."""
    registry: dict[str, list[PersonInput]] = {c: [] for c in CODES}
    for k, (given, family, a, b) in enumerate(NEIGHBOURS):
        for code in (a, b):
            registry[code].append(_person(f"n{k}", given, family))
    for code in at:
        registry[code].append(_person("p", *PERSON[code]))
    rows = []
    for code in CODES:
        people, certs = merge_local(registry[code], KEYS, code, bound=1)
        rows += [
            LabelledRow(code, r)
            for r in hashed_rows(
                "run",
                people,
                certs,
                token=lambda d: hashlib.sha256(d).digest(),
                blank=lambda: os.urandom(32),
            )
        ]
    return count_rows(rows, CODES, len(KEYS)).duplicated


def _sampler(at: tuple[str, ...], sens: Sensitivity):
    true = {"D": _duplicates(()), "D'": _duplicates(at)}

    def sample(which: str, n: int) -> list[int]:
        # As the tally node draws a release (`ring_releases.noisy_releases`).
        noise, _ = plan_noise(
            Mechanism.DISCRETE_LAPLACE,
            rho=None,
            epsilon=EPSILON,
            sensitivity=sens.l1,
            confidence=0.95,
        )
        return add_noise(noise, [true[which]] * n)

    return sample, true


@pytest.mark.slow
@pytest.mark.parametrize("at", [("M1",), ("M1", "M2"), CODES], ids=["1-node", "2-nodes", "3-nodes"])
def test_duplicate_release_does_not_exceed_claimed_epsilon(at):
    """For a bridging person in 1, 2 or 3 municipalities, eps_lb <= the claimed epsilon."""
    sens = sensitivities(len(KEYS), 1, len(CODES))["dup_overall"]
    sample, true = _sampler(at, sens)
    lb, t = eps_lower_bound(sample)
    without, with_person = true["D"], true["D'"]
    print(
        f"person at {len(at)} node(s): duplicates {without} -> {with_person}, "
        f"sensitivity {sens.l1}, claimed eps={EPSILON}, eps_lb={lb:.4f} (X >= {t})"
    )
    assert lb <= EPSILON


@pytest.mark.slow
def test_auditor_flags_the_former_per_node_bound():
    """With the old bound R*max(1, m-1) = 3 the bridging person at 3 nodes breaks the claim."""
    old = Sensitivity(3, 3)
    sample, true = _sampler(CODES, old)
    assert abs(true["D'"] - true["D"]) > old.l1
    lb, _ = eps_lower_bound(sample)
    change = abs(true["D'"] - true["D"])
    print(f"former bound 3, change {change}: claimed eps={EPSILON}, eps_lb={lb:.4f}")
    assert lb > EPSILON
