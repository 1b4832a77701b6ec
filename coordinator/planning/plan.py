"""Audit plans: which checks an audit runs, at what privacy cost and confidence.

A plan is a small YAML file written by an oversight body (`fedaudit/plans/default.yaml`
is the product's default). It is validated completely before anything is sent to a
node: a typo in a plan must not silently drop a check or spend budget on the wrong
query, so unknown keys, duplicate keys, NaN, infinities and out-of-range values are
all rejected, each with the file and the dotted field it concerns. All problems are
reported at once.

The node list may be empty in the file: the demo and `fedaudit audit run --node
NAME=ADDR` supply the nodes through `AuditPlan.with_nodes`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cronsim import CronSim, CronSimError

from fedaudit.common.ring_protocol import ALL_KEYS, NAME_KEYS
from fedaudit.common.safe_yaml import MAX_BYTES, YamlError, load_yaml
from fedaudit.coordinator.errors import PlanError
from fedaudit.coordinator.planning.cohorts import MAX_CATCH_UP_MONTHS, MONTH_RE, CohortPlan
from fedaudit.node.domain import Mechanism

CHECK_NAMES: tuple[str, ...] = (
    "pass_rates",
    "employment",
    "credential_inflation",
    "recognition",
    "appeals",
    "outcome_disparity",
    "certificates",
    "earnings",
    "duplicates",
    "revocation",
)
"""Every check the product has, in the order reports list them."""

QUERY_CHECKS: Mapping[str, int] = {
    "pass_rates": 1,
    "employment": 1,
    "recognition": 2,
    "appeals": 1,
    "certificates": 1,
    "earnings": 1,
}
"""Checks that send queries, and how many queries each sends."""

QUERY_WEIGHTS: Mapping[str, tuple[float, ...]] = {
    "recognition": (0.8, 0.2),
}
"""How a check's cost is shared by its queries, in `planning.checks` order (default: evenly).

Recognition sends the decision-time query its late share is tested on, and the decisions
query that is only described: most of the cost goes where a finding is decided, which
narrows the late share's interval (noise variance x 0.625 against an even split)."""

COHORT_FIELDS: tuple[str, ...] = ("lag_months", "first", "catch_up_months", "by_provider")

DISPARITY_DIMENSIONS: tuple[str, ...] = ("sex", "citizenship_group")
MONTHS_AFTER: tuple[int, ...] = (6, 12)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ADDRESS_RE = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>\d{1,5})$"
)
_YEAR_RE = re.compile(r"[0-9]{4}")


@dataclass(frozen=True)
class NodeRef:
    """A node the audit asks: its name (the municipality code) and `host:port`
    (empty when the node is reached by name through a hub)."""

    name: str
    address: str


@dataclass(frozen=True)
class Budget:
    """The privacy cost of one check: rho (discrete_gaussian) or epsilon (discrete_laplace)."""

    rho: float | None = None
    epsilon: float | None = None

    def split(self, parts: int) -> Budget:
        """The cost of each of `parts` queries sharing this budget evenly.

        Epsilon is split linearly, so the check's pure-DP cost stays its stated epsilon
        under sequential composition.
        """
        if parts < 1:
            raise ValueError("parts must be >= 1")
        return Budget(
            rho=None if self.rho is None else self.rho / parts,
            epsilon=None if self.epsilon is None else self.epsilon / parts,
        )

    def rho_charged(self) -> float:
        """What a node charges in its zCDP ledger for one query (eps^2/2 under Laplace)."""
        if self.rho is not None:
            return self.rho
        if self.epsilon is not None:
            return self.epsilon**2 / 2
        return 0.0


@dataclass(frozen=True)
class PassRatesCheck:
    budget: Budget
    tolerance: float


@dataclass(frozen=True)
class EmploymentCheck:
    budget: Budget
    tolerance: float
    months_after: int = 12


@dataclass(frozen=True)
class CredentialInflationCheck:
    """Derived from pass_rates and employment: sends no query of its own."""

    tolerance: float


@dataclass(frozen=True)
class RecognitionCheck:
    budget: Budget
    tolerance: float
    limit_days: int = 90


@dataclass(frozen=True)
class AppealsCheck:
    budget: Budget
    tolerance: float


@dataclass(frozen=True)
class OutcomeDisparityCheck:
    """Derived from pass_rates and/or employment: group vs the rest of its municipality."""

    tolerance: float
    by: tuple[str, ...] = ("citizenship_group",)


@dataclass(frozen=True)
class CertificatesCheck:
    """Descriptive only (counts by pathway): no test, so no tolerance."""

    budget: Budget


@dataclass(frozen=True)
class EarningsCheck:
    """Descriptive only (earnings bins and median): no test, so no tolerance."""

    budget: Budget
    months_after: int = 12


DUPLICATE_KEYS: tuple[str, ...] = ALL_KEYS
"""Match keys the duplicates check may use (fedaudit.common.ring_protocol.ALL_KEYS)."""
DEFAULT_DUPLICATE_KEYS: tuple[str, ...] = NAME_KEYS
"""The two order-independent name keys (docs/dedup.md); national id only when asked."""


@dataclass(frozen=True)
class DuplicatesCheck:
    """The blinding ring (docs/dedup.md): its DP releases cost `budget` at the coordinator,
    and every node that joins charges the same to its own ledger. Findings are raised
    where a count's interval excludes zero, so there is no tolerance."""

    budget: Budget
    keys: tuple[str, ...] = DEFAULT_DUPLICATE_KEYS
    bound: int = 2
    shopping: bool = True
    revoked: bool = True
    every_months: int = 1
    """On a schedule, the ring runs in every `every_months`-th slot month (counted from
    January), since it charges every cohort at every node; 1: every run."""
    cadence_reason: str = ""
    """Why that cadence (shown in the report when a run leaves the ring out)."""


@dataclass(frozen=True)
class RevocationCheck:
    """Revocation reconciliation (docs/reconciliation.md): every pair of nodes runs a PSI;
    each recognising node keeps its own matches and releases one DP count of persons,
    charging `budget` to its own ledger."""

    budget: Budget
    every_months: int = 1
    """On a schedule, run in every `every_months`-th slot month (it charges every cohort)."""
    cadence_reason: str = ""


@dataclass(frozen=True)
class Checks:
    """The checks a plan runs; an absent check is None."""

    pass_rates: PassRatesCheck | None = None
    employment: EmploymentCheck | None = None
    credential_inflation: CredentialInflationCheck | None = None
    recognition: RecognitionCheck | None = None
    appeals: AppealsCheck | None = None
    outcome_disparity: OutcomeDisparityCheck | None = None
    certificates: CertificatesCheck | None = None
    earnings: EarningsCheck | None = None
    duplicates: DuplicatesCheck | None = None
    revocation: RevocationCheck | None = None

    def enabled(self) -> tuple[str, ...]:
        """Names of the configured checks, in report order."""
        return tuple(name for name in CHECK_NAMES if getattr(self, name) is not None)


@dataclass(frozen=True)
class AuditPlan:
    name: str
    requester: str
    confidence: float
    checks: Checks
    deadline_seconds: float = 60.0
    min_answering_nodes: int = 1
    mechanism: Mechanism = Mechanism.DISCRETE_GAUSSIAN
    periods: tuple[str, ...] | None = None
    min_denominator: int = 30
    nodes: tuple[NodeRef, ...] = ()
    # Cron expression (5 fields, UTC) for unattended runs; None: run on demand only.
    schedule: str | None = None
    # Ask each check about cohorts (planning/cohorts.py) instead of every published year.
    cohorts: CohortPlan | None = None
    # Set per run (planning/cohort_runs.py): the run's month and, per check, the cohorts it
    # asks; checks absent here were answered by earlier runs and are not asked again.
    run_month: str | None = None
    asked: Mapping[str, tuple[str, ...]] | None = None
    source: str = field(default="<plan>", compare=False)

    def with_nodes(
        self, nodes: Mapping[str, str] | Iterable[NodeRef | tuple[str, str]]
    ) -> AuditPlan:
        """The same plan asking `nodes` instead: name -> address, or NodeRefs.

        Validated like the file's `nodes` (unique names, host:port addresses).
        """
        problems: list[str] = []
        items = nodes.items() if isinstance(nodes, Mapping) else nodes
        refs = tuple(n if isinstance(n, NodeRef) else NodeRef(*n) for n in items)
        _check_nodes(refs, "nodes", self.source, problems)
        _check_node_count(refs, self.min_answering_nodes, self.source, problems)
        if problems:
            raise PlanError(problems)
        return replace(self, nodes=refs)

    def query_budget(self, check: str, index: int = 0) -> Budget:
        """The cost of query `index` of those `check` sends (its share of the check's budget).

        Shares follow `QUERY_WEIGHTS` (evenly by default). Epsilon is shared linearly, so
        the check's pure-DP cost stays its stated epsilon under sequential composition;
        rho likewise adds up to the check's rho.
        """
        if check not in QUERY_CHECKS:
            raise KeyError(f"{check} sends no query")
        spec = getattr(self.checks, check)
        if spec is None:
            raise KeyError(f"{check} is not part of plan {self.name}")
        budget: Budget = spec.budget
        parts = QUERY_CHECKS[check]
        weights = QUERY_WEIGHTS.get(check, (1.0 / parts,) * parts)
        w = weights[index]
        return Budget(
            rho=None if budget.rho is None else budget.rho * w,
            epsilon=None if budget.epsilon is None else budget.epsilon * w,
        )

    def total_rho_per_node(self) -> float:
        """The rho each node is asked to charge for one run of this plan, for pre-flight.

        Includes the duplicates check's ring, which each joining node charges once.

        The sum of what every query costs in a node's zCDP ledger: rho under
        discrete_gaussian, eps^2/2 per query under discrete_laplace (so a Laplace check
        split over two queries costs 2 x (eps/2)^2/2 = eps^2/4 in rho).
        """
        total = 0.0
        for check, parts in QUERY_CHECKS.items():
            if getattr(self.checks, check) is not None:
                total += sum(self.query_budget(check, i).rho_charged() for i in range(parts))
        return total + self.protocol_rho_per_node()

    def protocol_rho_per_node(self) -> float:
        """What the cross-node protocols charge at each node: the ring and reconciliation.

        They are not catalogue queries, so a node's preflight cannot price them.
        """
        total = 0.0
        if self.checks.duplicates is not None:
            # Every node that joins the blinding ring charges the check's cost once.
            total += self.checks.duplicates.budget.rho_charged()
        if self.checks.revocation is not None:
            # Every recognising node charges its one release.
            total += self.checks.revocation.budget.rho_charged()
        return total

    def tolerances(self) -> dict[str, float]:
        """Finding kind -> tolerance, for the report's `audit.tolerances`."""
        c = self.checks
        pairs: list[tuple[str, Any]] = [
            ("pass_rate_gap", c.pass_rates),
            ("employment_gap", c.employment),
            ("credential_inflation", c.credential_inflation),
            ("recognition_delay", c.recognition),
            ("appeal_anomaly", c.appeals),
            ("outcome_disparity", c.outcome_disparity),
        ]
        return {kind: spec.tolerance for kind, spec in pairs if spec is not None}


def load_plan(path: str | Path) -> AuditPlan:
    """Read and validate a YAML plan file; PlanError names the file and the field."""
    source = str(path)
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # never read more than the loader would accept
    except OSError as exc:
        raise PlanError(f"{source}: cannot read the plan: {exc.strerror or exc}") from exc
    try:
        data = load_yaml(raw)  # size, alias, depth and duplicate-key limits
    except YamlError as exc:
        raise PlanError(f"{source}: {exc}") from None
    return parse_plan(data, source=source)


def parse_node_option(text: str, *, source: str = "--node") -> NodeRef:
    """Parse a command-line `NAME=HOST:PORT` into a NodeRef."""
    name, sep, address = text.partition("=")
    problems: list[str] = []
    if not sep:
        raise PlanError(f"{source}: {text!r}: expected NAME=HOST:PORT")
    _check_nodes((NodeRef(name.strip(), address.strip()),), "node", source, problems)
    if problems:
        raise PlanError(problems)
    return NodeRef(name.strip(), address.strip())


def parse_plan(data: object, *, source: str) -> AuditPlan:
    """Validate plan data (as loaded from YAML) into an AuditPlan.

    Every problem is collected and raised together in one PlanError.
    """
    r = _Reader(source)
    if not isinstance(data, Mapping):
        raise PlanError(f"{source}: the plan must be a mapping of fields (got {_kind(data)})")
    top = r.mapping_keys(
        data,
        "",
        required=("name", "requester", "confidence", "checks"),
        optional=(
            "deadline_seconds",
            "min_answering_nodes",
            "mechanism",
            "periods",
            "min_denominator",
            "nodes",
            "schedule",
            "cohorts",
        ),
    )
    name = r.text(top, "name", pattern=_NAME_RE, what="letters, digits, '.', '_' or '-'")
    requester = r.text(top, "requester")
    confidence = r.number(top, "confidence", low=0.5, high=1.0, low_open=True, high_open=True)
    deadline = r.number(top, "deadline_seconds", low=0.0, low_open=True, default=60.0)
    min_nodes = r.integer(top, "min_answering_nodes", low=1, default=1)
    mechanism = r.mechanism(top, "mechanism")
    periods = r.periods(top, "periods")
    min_den = r.integer(top, "min_denominator", low=1, default=30)
    nodes = r.nodes(top, "nodes")
    schedule = r.cron(top, "schedule")
    cohorts = r.cohorts(top, "cohorts")
    checks = r.checks(top["checks"], "checks", mechanism) if "checks" in top else None
    if nodes:
        _check_node_count(nodes, min_nodes, source, r.problems)
    if r.problems:
        raise PlanError(r.problems)
    if name is None or requester is None or confidence is None or checks is None:
        raise AssertionError("unreachable: a missing required field is a recorded problem")
    return AuditPlan(
        name=name,
        requester=requester,
        confidence=confidence,
        checks=checks,
        deadline_seconds=deadline if deadline is not None else 60.0,
        min_answering_nodes=min_nodes if min_nodes is not None else 1,
        mechanism=mechanism,
        periods=periods,
        min_denominator=min_den if min_den is not None else 30,
        nodes=nodes,
        schedule=schedule,
        cohorts=cohorts,
        source=source,
    )


# --- validation helpers ---------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _check_nodes(nodes: Iterable[NodeRef], path: str, source: str, problems: list[str]) -> None:
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        where = f"{path}[{i}]" if path == "nodes" else path
        if not isinstance(node.name, str) or not _NAME_RE.fullmatch(node.name):
            problems.append(
                f"{source}: {where}.name: must be letters, digits, '.', '_' or '-' "
                f"(got {node.name!r})"
            )
        elif node.name in seen:
            problems.append(f"{source}: {where}.name: duplicate node name {node.name!r}")
        else:
            seen.add(node.name)
        if node.address == "":
            continue  # named, not addressed: reached through a hub (`audit run --hub`)
        match = _ADDRESS_RE.fullmatch(node.address) if isinstance(node.address, str) else None
        if match is None or not 1 <= int(match.group("port")) <= 65535:
            problems.append(
                f"{source}: {where}.address: must be host:port with a port in 1..65535 "
                f"(got {node.address!r})"
            )


def _check_node_count(
    nodes: tuple[NodeRef, ...], min_nodes: int | None, source: str, problems: list[str]
) -> None:
    if min_nodes is not None and len(nodes) < min_nodes:
        problems.append(
            f"{source}: nodes: {len(nodes)} node(s) listed but min_answering_nodes is "
            f"{min_nodes}; the audit could never complete"
        )


class _Reader:
    """Reads fields out of loaded YAML, recording `source: field: message` problems."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{self.source}: {path}: {message}")

    def mapping_keys(
        self,
        data: Mapping[Any, Any],
        path: str,
        *,
        required: tuple[str, ...],
        optional: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Check the keys of a mapping; returns it with the path prefix remembered."""
        allowed = set(required) | set(optional)
        for key in data:
            if not isinstance(key, str) or key not in allowed:
                known = ", ".join(sorted(allowed))
                self.problem(_join(path, str(key)), f"unknown field (known: {known})")
        for key in required:
            if key not in data:
                self.problem(_join(path, key), "required field is missing")
        out = {k: v for k, v in data.items() if isinstance(k, str) and k in allowed}
        out["__path__"] = path
        return out

    def text(
        self,
        m: Mapping[str, Any],
        key: str,
        *,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> str | None:
        if key not in m:
            return None
        path = _join(m["__path__"], key)
        value = m[key]
        if not isinstance(value, str) or not value.strip():
            self.problem(path, f"must be a non-empty string (got {_kind(value)})")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(path, f"must be {what} (got {value!r})")
            return None
        return value

    def cron(self, m: Mapping[str, Any], key: str) -> str | None:
        """A 5-field cron expression (minute hour day month weekday), evaluated in UTC."""
        value = self.text(m, key)
        if value is None:
            return None
        if len(value.split()) != 5:
            self.problem(
                _join(m["__path__"], key),
                f"must be a cron expression with 5 fields, e.g. '0 6 1 * *' (got {value!r})",
            )
            return None
        try:
            CronSim(value, dt.datetime(2000, 1, 1))
        except CronSimError as exc:
            self.problem(_join(m["__path__"], key), f"invalid cron expression {value!r}: {exc}")
            return None
        return value

    def number(
        self,
        m: Mapping[str, Any],
        key: str,
        *,
        low: float,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        default: float | None = None,
    ) -> float | None:
        if key not in m:
            return default
        path = _join(m["__path__"], key)
        value = m[key]
        lo_txt = f"{'>' if low_open else '>='} {low:g}"
        rng = lo_txt if high is None else f"in {'(' if low_open else '['}{low:g}, {high:g}"
        if high is not None:
            rng += ")" if high_open else "]"
        message = f"must be a finite number {rng}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(path, f"{message} (got {_kind(value)})")
            return None
        number = float(value)
        ok = math.isfinite(number) and (number > low if low_open else number >= low)
        if ok and high is not None:
            ok = number < high if high_open else number <= high
        if not ok:
            self.problem(path, f"{message} (got {value!r})")
            return None
        return number

    def integer(
        self,
        m: Mapping[str, Any],
        key: str,
        *,
        low: int,
        high: int | None = None,
        choices: tuple[int, ...] = (),
        default: int | None = None,
    ) -> int | None:
        if key not in m:
            return default
        path = _join(m["__path__"], key)
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer (got {_kind(value)})")
            return None
        if choices and value not in choices:
            self.problem(path, f"must be one of {', '.join(map(str, choices))} (got {value})")
            return None
        if value < low or (high is not None and value > high):
            rng = f">= {low}" if high is None else f"in {low}..{high}"
            self.problem(path, f"must be an integer {rng} (got {value})")
            return None
        return value

    def cohorts(self, m: Mapping[str, Any], key: str) -> CohortPlan | None:
        """The `cohorts` section: {lag_months, first, catch_up_months, by_provider} (optional)."""
        if key not in m or m[key] is None:
            return None
        path = _join(m["__path__"], key)
        value = m[key]
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a mapping of settings (got {_kind(value)})")
            return None
        c = self.mapping_keys(value, path, required=(), optional=COHORT_FIELDS)
        lag = self.integer(c, "lag_months", low=0, high=24, default=1)
        catch_up = self.integer(c, "catch_up_months", low=0, high=MAX_CATCH_UP_MONTHS, default=3)
        first = None
        if "first" in c:
            first = c["first"]
            if not isinstance(first, str) or not MONTH_RE.match(first):
                self.problem(
                    _join(path, "first"), f'must be a month such as "2027-01" (got {_kind(first)})'
                )
                first = None
        by_provider = c.get("by_provider", False)
        if not isinstance(by_provider, bool):
            self.problem(
                _join(path, "by_provider"), f"must be true or false (got {_kind(by_provider)})"
            )
            by_provider = False
        return CohortPlan(
            lag_months=1 if lag is None else lag,
            first=first,
            catch_up_months=3 if catch_up is None else catch_up,
            by_provider=by_provider,
        )

    def cadence(self, m: Mapping[str, Any]) -> tuple[int, str]:
        """`every_months` (1..120) and `cadence_reason` of a check reading every cohort."""
        every = self.integer(m, "every_months", low=1, high=120, default=1)
        reason = ""
        if "cadence_reason" in m:
            reason = self.text(m, "cadence_reason") or ""
        return (every or 1), reason

    def mechanism(self, m: Mapping[str, Any], key: str) -> Mechanism:
        if key not in m:
            return Mechanism.DISCRETE_GAUSSIAN
        value = m[key]
        for mech in Mechanism:
            if value == mech.value:
                return mech
        known = ", ".join(mech.value for mech in Mechanism)
        self.problem(_join(m["__path__"], key), f"must be one of {known} (got {_kind(value)})")
        return Mechanism.DISCRETE_GAUSSIAN

    def periods(self, m: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
        if key not in m or m[key] is None:
            return None
        path = _join(m["__path__"], key)
        value = m[key]
        if not isinstance(value, list) or not value:
            self.problem(path, f"must be a non-empty list of years (got {_kind(value)})")
            return None
        out: list[str] = []
        for i, item in enumerate(value):
            text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
            if not isinstance(text, str) or not _YEAR_RE.fullmatch(text):
                self.problem(_join(path, i), f'must be a year such as "2024" (got {_kind(item)})')
            elif text in out:
                self.problem(_join(path, i), f"duplicate period {text!r}")
            else:
                out.append(text)
        return tuple(out)

    def nodes(self, m: Mapping[str, Any], key: str) -> tuple[NodeRef, ...]:
        if key not in m or m[key] is None:
            return ()
        path = _join(m["__path__"], key)
        value = m[key]
        if not isinstance(value, list):
            self.problem(path, f"must be a list of {{name, address}} (got {_kind(value)})")
            return ()
        refs: list[NodeRef] = []
        for i, item in enumerate(value):
            where = _join(path, i)
            if not isinstance(item, Mapping):
                self.problem(where, f"must be a mapping {{name, address}} (got {_kind(item)})")
                continue
            # Without an address the node is named only: it is reached through a hub.
            entry = self.mapping_keys(item, where, required=("name",), optional=("address",))
            name, address = entry.get("name"), entry.get("address", "")
            if "name" in entry:
                refs.append(NodeRef(name, "" if address is None else address))
        _check_nodes(refs, "nodes", self.source, self.problems)
        return tuple(refs)

    def budget(self, m: Mapping[str, Any], mechanism: Mechanism) -> Budget:
        path = m["__path__"]
        wanted, other = (
            ("rho", "epsilon") if mechanism is Mechanism.DISCRETE_GAUSSIAN else ("epsilon", "rho")
        )
        if other in m:
            self.problem(
                _join(path, other),
                f"not used with mechanism {mechanism.value}; give {wanted} instead",
            )
        if wanted not in m:
            self.problem(_join(path, wanted), f"required with mechanism {mechanism.value}")
            return Budget()
        value = self.number(m, wanted, low=0.0, low_open=True)
        return Budget(**{wanted: value}) if value is not None else Budget()

    def checks(self, data: object, path: str, mechanism: Mechanism) -> Checks | None:
        if not isinstance(data, Mapping) or not data:
            self.problem(path, f"must be a non-empty mapping of checks (got {_kind(data)})")
            return None
        for key in data:
            if key not in CHECK_NAMES:
                known = ", ".join(CHECK_NAMES)
                self.problem(_join(path, str(key)), f"unknown check (known: {known})")
        built: dict[str, Any] = {}
        for name in CHECK_NAMES:
            if name not in data:
                continue
            spec = data[name]
            where = _join(path, name)
            if not isinstance(spec, Mapping):
                self.problem(where, f"must be a mapping of settings (got {_kind(spec)})")
                continue
            built[name] = _CHECK_READERS[name](self, spec, where, mechanism)
        checks = Checks(**built)
        self._check_dependencies(checks, path)
        return checks

    def _check_dependencies(self, checks: Checks, path: str) -> None:
        if checks.credential_inflation is not None:
            missing = [n for n in ("pass_rates", "employment") if getattr(checks, n) is None]
            if missing:
                self.problem(
                    _join(path, "credential_inflation"),
                    f"needs the checks pass_rates and employment (missing: {', '.join(missing)})",
                )
        if (
            checks.outcome_disparity is not None
            and checks.pass_rates is None
            and checks.employment is None
        ):
            self.problem(
                _join(path, "outcome_disparity"), "needs the check pass_rates or employment"
            )

    def tolerance(self, m: Mapping[str, Any]) -> float:
        value = self.number(m, "tolerance", low=0.0, high=1.0, low_open=True, high_open=True)
        return value if value is not None else 0.0

    def by(self, m: Mapping[str, Any]) -> tuple[str, ...]:
        if "by" not in m:
            return ("citizenship_group",)
        path = _join(m["__path__"], "by")
        value = m["by"]
        if not isinstance(value, list) or not value:
            self.problem(path, f"must be a non-empty list (got {_kind(value)})")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if item not in DISPARITY_DIMENSIONS:
                allowed = ", ".join(DISPARITY_DIMENSIONS)
                self.problem(_join(path, i), f"must be one of {allowed} (got {_kind(item)})")
            elif item in out:
                self.problem(_join(path, i), f"duplicate dimension {item!r}")
            else:
                out.append(item)
        return tuple(out)


def _read_pass_rates(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(spec, path, required=("tolerance",), optional=("rho", "epsilon"))
    return PassRatesCheck(budget=r.budget(m, mech), tolerance=r.tolerance(m))


def _read_employment(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(
        spec, path, required=("tolerance",), optional=("rho", "epsilon", "months_after")
    )
    months = r.integer(m, "months_after", low=1, choices=MONTHS_AFTER, default=12)
    return EmploymentCheck(
        budget=r.budget(m, mech), tolerance=r.tolerance(m), months_after=months or 12
    )


def _read_credential_inflation(
    r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism
) -> Any:
    m = r.mapping_keys(spec, path, required=("tolerance",))
    return CredentialInflationCheck(tolerance=r.tolerance(m))


def _read_recognition(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(
        spec, path, required=("tolerance",), optional=("rho", "epsilon", "limit_days")
    )
    limit = r.integer(m, "limit_days", low=1, high=730, default=90)
    return RecognitionCheck(
        budget=r.budget(m, mech), tolerance=r.tolerance(m), limit_days=limit or 90
    )


def _read_appeals(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(spec, path, required=("tolerance",), optional=("rho", "epsilon"))
    return AppealsCheck(budget=r.budget(m, mech), tolerance=r.tolerance(m))


def _read_outcome_disparity(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(spec, path, required=("tolerance",), optional=("by",))
    return OutcomeDisparityCheck(tolerance=r.tolerance(m), by=r.by(m))


def _read_certificates(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(spec, path, required=(), optional=("rho", "epsilon"))
    return CertificatesCheck(budget=r.budget(m, mech))


def _read_earnings(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(spec, path, required=(), optional=("rho", "epsilon", "months_after"))
    months = r.integer(m, "months_after", low=1, choices=MONTHS_AFTER, default=12)
    return EarningsCheck(budget=r.budget(m, mech), months_after=months or 12)


def _read_duplicates(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(
        spec,
        path,
        required=(),
        optional=(
            "rho",
            "epsilon",
            "keys",
            "bound",
            "shopping",
            "revoked",
            "every_months",
            "cadence_reason",
        ),
    )
    keys: tuple[str, ...] = DEFAULT_DUPLICATE_KEYS
    if "keys" in m:
        value = m["keys"]
        where = _join(path, "keys")
        if (
            not isinstance(value, list)
            or not value
            or any(k not in DUPLICATE_KEYS for k in value)
            or len(set(value)) != len(value)
        ):
            r.problem(
                where,
                f"must be a non-empty list of distinct keys from {', '.join(DUPLICATE_KEYS)}",
            )
        else:
            keys = tuple(value)
    flags = {}
    for name in ("shopping", "revoked"):
        value = m.get(name, True)
        if not isinstance(value, bool):
            r.problem(_join(path, name), f"must be true or false (got {_kind(value)})")
            value = True
        flags[name] = value
    bound = r.integer(m, "bound", low=1, high=10, default=2)
    every, reason = r.cadence(m)
    return DuplicatesCheck(
        budget=r.budget(m, mech),
        keys=keys,
        bound=bound or 2,
        shopping=flags["shopping"],
        revoked=flags["revoked"],
        every_months=every,
        cadence_reason=reason,
    )


def _read_revocation(r: _Reader, spec: Mapping[str, Any], path: str, mech: Mechanism) -> Any:
    m = r.mapping_keys(spec, path, required=("rho",), optional=("every_months", "cadence_reason"))
    every, reason = r.cadence(m)
    return RevocationCheck(
        budget=r.budget(m, Mechanism.DISCRETE_GAUSSIAN), every_months=every, cadence_reason=reason
    )


_CHECK_READERS: Mapping[str, Callable[[_Reader, Mapping[str, Any], str, Mechanism], Any]] = {
    "pass_rates": _read_pass_rates,
    "employment": _read_employment,
    "credential_inflation": _read_credential_inflation,
    "recognition": _read_recognition,
    "appeals": _read_appeals,
    "outcome_disparity": _read_outcome_disparity,
    "certificates": _read_certificates,
    "earnings": _read_earnings,
    "duplicates": _read_duplicates,
    "revocation": _read_revocation,
}
