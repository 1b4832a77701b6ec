"""Domain errors of a node, and the refusal reasons they carry to the wire.

    NodeError
      + BundleError             an import was rejected (all problems listed)
      + PolicyError             the policy file is invalid
      + RefusedError            a request was refused; carries a RefusalReason
          - RequesterNotAllowedError
          - TemplateNotAllowedError
          - BudgetExhaustedError     (with what remains)
          - InvalidParametersError
          - VersionMismatchError
          - DataUnavailableError
          - RateLimitedError

Only the gRPC boundary (`fedaudit.node.server`) turns these into status codes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence


class RefusalReason(enum.Enum):
    """Why a node refused a request; the names match the wire enum."""

    REQUESTER_NOT_ALLOWED = "REQUESTER_NOT_ALLOWED"
    TEMPLATE_NOT_ALLOWED = "TEMPLATE_NOT_ALLOWED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    INVALID_PARAMETERS = "INVALID_PARAMETERS"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    DATA_UNAVAILABLE = "DATA_UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    ROSTER_REFUSED = "ROSTER_REFUSED"
    RING_UNAVAILABLE = "RING_UNAVAILABLE"


class NodeError(Exception):
    """Base of every error a node raises on purpose."""


class BundleError(NodeError):
    """A data bundle failed validation; nothing was written.

    `problems` are lines of the form `file:line: column: message`.
    """

    def __init__(self, problems: Sequence[str], *, total: int | None = None) -> None:
        self.problems = list(problems)
        # `problems` may be capped (with a closing "N more" line); `total` counts them all.
        self.total = total if total is not None else len(self.problems)
        head = f"{self.total} problem(s) in the bundle; nothing was imported"
        super().__init__("\n".join([head, *self.problems]))


class PolicyError(NodeError):
    """The node policy file is invalid; the message names the field."""


class RefusedError(NodeError):
    """A request the node will not answer. Nothing was charged or written."""

    reason: RefusalReason = RefusalReason.INVALID_PARAMETERS

    def __init__(self, message: str, details: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, str] = dict(details or {})


class RequesterNotAllowedError(RefusedError):
    reason = RefusalReason.REQUESTER_NOT_ALLOWED


class TemplateNotAllowedError(RefusedError):
    reason = RefusalReason.TEMPLATE_NOT_ALLOWED


class BudgetExhaustedError(RefusedError):
    reason = RefusalReason.BUDGET_EXHAUSTED


class InvalidParametersError(RefusedError):
    reason = RefusalReason.INVALID_PARAMETERS


class VersionMismatchError(RefusedError):
    reason = RefusalReason.VERSION_MISMATCH


class DataUnavailableError(RefusedError):
    reason = RefusalReason.DATA_UNAVAILABLE


class RateLimitedError(RefusedError):
    reason = RefusalReason.RATE_LIMITED


class RosterRefusedError(RefusedError):
    """A blinding-ring roster is not a set of distinct federation nodes this node accepts."""

    reason = RefusalReason.ROSTER_REFUSED


class RingUnavailableError(RefusedError):
    """This node cannot take part in a ring (no federation certificate: an insecure node)."""

    reason = RefusalReason.RING_UNAVAILABLE
