"""What a blinding-ring run is asked to do: the `duplicates` check as the ring sees it.

A module of its own because the run, the releases and the audit runner all read it,
and it reads nothing but the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedaudit.common.ring_protocol import NAME_KEYS, RingParams
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.node.domain import Mechanism


@dataclass(frozen=True)
class DedupConfig:
    """The `duplicates` check: its privacy cost and what the ring matches on."""

    rho: float | None = 0.4
    epsilon: float | None = None
    keys: tuple[str, ...] = NAME_KEYS
    bound: int = 2
    shopping: bool = True
    revoked: bool = True
    min_nodes: int = 2

    def params(self, mechanism: Mechanism) -> RingParams:
        """What every node is asked to join: the releases' rho (epsilon^2/2 for Laplace)."""
        gaussian = mechanism is Mechanism.DISCRETE_GAUSSIAN
        return RingParams(
            keys=self.keys,
            bound=self.bound,
            shopping=self.shopping,
            revoked=self.revoked,
            rho=(self.rho or 0.0) if gaussian else (self.epsilon or 0.0) ** 2 / 2,
            epsilon=None if gaussian else self.epsilon,
        )


def config_from_plan(plan: AuditPlan) -> DedupConfig | None:
    """The ring's configuration from the plan's `duplicates` check, or None when absent."""
    check = plan.checks.duplicates
    if check is None:
        return None
    return DedupConfig(
        rho=check.budget.rho,
        epsilon=check.budget.epsilon,
        keys=check.keys,
        bound=check.bound,
        shopping=check.shopping,
        revoked=check.revoked,
    )
