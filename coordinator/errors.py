"""Errors the coordinator raises on purpose.

    CoordinatorError
      + PlanError      an audit plan is invalid; every problem names the file and the
                       dotted field, e.g. `plan.yaml: checks.employment.rho: ...`
      + AnswerError    a node's answer does not have the shape its template promises
                       (missing category or dimension); the answer is not used
      + NodeCallError  one call to one node failed (`node` says which)
          - NodeRefusedError      the node refused; carries its structured reason
          - NodeTimeoutError      no answer before the deadline
          - NodeUnavailableError  unreachable, or an unexpected transport failure

NodeCallErrors end up in the report's coverage, not as a failed audit: the audit goes
on with the nodes that answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class CoordinatorError(Exception):
    """Base of every error the coordinator raises on purpose."""


class PlanError(CoordinatorError):
    """An audit plan failed validation.

    `problems` holds one line per problem, `source: dotted.field: message`, so a
    plan author fixes all of them in one go instead of one per run.
    """

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class AnswerError(CoordinatorError):
    """A node answer lacks a category or dimension the evaluation needs."""


class NodeCallError(CoordinatorError):
    """A call to one node failed; `message` is meant for the report's coverage section."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


class NodeRefusedError(NodeCallError):
    """The node refused the request; `reason` is the wire RefusalReason name."""

    def __init__(
        self,
        node: str,
        reason: str,
        message: str,
        details: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(node, message)
        self.reason = reason
        self.details: dict[str, str] = dict(details or {})


class NodeTimeoutError(NodeCallError):
    """The node did not answer before the audit's deadline."""


class NodeUnavailableError(NodeCallError):
    """The node could not be reached, or failed in a way it did not explain."""
