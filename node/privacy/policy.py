"""The node policy: the municipality's own rules for who may ask what, and at what privacy cost.

The policy is a small YAML file owned by the municipality's data officer (see
`deploy/policy.example.yaml`). It is parsed strictly, because a lenient parser turns
a typo into a looser rule: unknown keys, duplicate keys, booleans where numbers
belong, NaN or infinite budgets, and template names the node does not know are all
errors. Every error names the file and the dotted path of the field, so the officer
can fix it without reading code.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedaudit.common.safe_yaml import YamlError, load_yaml
from fedaudit.node.errors import PolicyError

POLICY_VERSION = 1
MAX_POLICY_BYTES = 1024 * 1024
"""A policy is a few dozen lines; anything larger is a mistake or an attack."""

MAX_RHO = 1_000_000.0
"""Upper limit for any rho in the file. Far beyond any meaningful privacy loss, it keeps
ledger sums (integers of 1e-12 rho) inside 64 bits."""

MAX_BOUND = 100
MAX_SUPPRESS_BELOW = 1_000_000
MIN_YEAR, MAX_YEAR = 1900, 2100
PERIOD_KINDS = ("month", "quarter", "year")

DEFAULT_BOUNDS: Mapping[str, int] = MappingProxyType(
    {
        # One record per person where the metric is about a person's first event
        # (first assessment, first certificate's outcome, a recognition request, a
        # person's first appeal): the noise is then as small as a count of persons
        # allows. Two where the count itself is of several records (certificates).
        "assessment_results": 1,
        "certificates_issued": 2,
        "employment_outcomes": 1,
        "earnings_distribution": 1,
        "recognition_decision_time": 1,
        "recognition_decisions": 1,
        "appeal_outcomes": 1,
        # The blinding ring: occupations per person a node puts into one dedup run.
        "dedup_ring": 1,
        # Revocation reconciliation: its one release counts persons, each once.
        "revocation_reconciliation": 1,
    }
)
"""Records per person kept per query, per template, when the policy does not say.

Its keys are also the template names a policy may mention: a node answers no
template it has no contribution bound for.
"""

KNOWN_TEMPLATES: frozenset[str] = frozenset(DEFAULT_BOUNDS)
DEFAULT_SUPPRESS_BELOW = 10
DEFAULT_MIN_RHO_PER_QUERY = 0.001
"""Least charge of one query: below it an answer is mostly noise (a count's noise has a
standard deviation of about 22 persons at K = 1), so such a request can only serve to
probe the node cheaply, or to squat a request id. Refused as invalid."""
DEFAULT_PERIOD_SPAN_YEARS = 7

_REQUESTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
"""Requester names become ledger scopes and (later) match mTLS certificate names."""

_TOP_KEYS = (
    "version",
    "requesters",
    "budget",
    "reliability",
    "bounds",
    "periods",
    "templates",
    "revocation_reconciliation",
    "ring",
    "cohorts",
)
_COHORTS_KEYS = ("first", "open_months")
DEFAULT_COHORT_OPEN_MONTHS = 13
"""How long after its month a cohort's data is taken to keep changing (employment is
observed 6 and 12 months after a certificate, plus a month for the data to arrive)."""
MAX_COHORT_OPEN_MONTHS = 120
_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_RECONCILIATION_KEYS = ("share_revocations", "receive", "peers")
_REQUIRED_TOP_KEYS = ("version", "requesters", "budget")
_REQUESTER_KEYS = ("rho_per_period", "templates", "node_share")
_BUDGET_KEYS = (
    "period",
    "node_rho_total",
    "max_rho_per_request",
    "node_reserved_rho",
    "min_rho_per_query",
)
_REQUIRED_BUDGET_KEYS = ("period", "node_rho_total", "max_rho_per_request")
_RELIABILITY_KEYS = ("suppress_below",)
_PERIODS_KEYS = ("first", "last")
_RING_KEYS = (
    "min_municipalities",
    "allowed_peers",
    "min_rho",
    "padding_rho",
    "padding_delta",
    "pace_factor",
)

DEFAULT_RING_MIN_MUNICIPALITIES = 2
DEFAULT_RING_MIN_RHO = 0.05
"""A ring run asking less than this is refused: a near-free run would let a requester
probe the ring as often as it likes (the attack of issue 9 asked 1e-12)."""
MAX_RING_MUNICIPALITIES = 1000
DEFAULT_RING_PADDING_RHO = 0.25
"""zCDP rho of the ring's DP dummy padding (node/ring/padding.py): what the row counts of
every batch cost the persons of a registry, charged at Join as a separate ledger entry."""
DEFAULT_RING_PADDING_DELTA = 1e-7
"""The padding's truncation delta (the chance that a cell's count gives a person away)."""
MAX_RING_PADDING_DELTA = 1e-4
DEFAULT_RING_PACE_FACTOR = 1.0
"""Scales the floor on the time from roster to first blinding (node/ring/service.py), so that
its length follows the padded batch, not the registry's size; 0 turns the floor off."""
MAX_RING_PACE_FACTOR = 100.0


@dataclass(frozen=True)
class RingPolicy:
    """The municipality's rules for the blinding ring (the optional `ring:` section).

    `min_municipalities`: a roster with fewer distinct federation nodes is refused.
    `allowed_peers`: when set, every other roster member must be one of these node
    names (None: any node of the federation). `min_rho`: the least a run may charge.
    `padding_rho`, `padding_delta`: the DP dummy padding of this node's batches
    (`fedaudit.node.ring.padding`), charged at Join on top of the run's rho.
    `pace_factor`: scales the floor on the time from the roster to the node's first
    blinding, a function of the padded batch only (`fedaudit.node.ring.service`).
    """

    min_municipalities: int = DEFAULT_RING_MIN_MUNICIPALITIES
    allowed_peers: frozenset[str] | None = None
    min_rho: float = DEFAULT_RING_MIN_RHO
    padding_rho: float | None = DEFAULT_RING_PADDING_RHO
    """None (`padding_rho: off`): no dummy rows, the coordinator sees exact row counts."""
    padding_delta: float = DEFAULT_RING_PADDING_DELTA
    pace_factor: float = DEFAULT_RING_PACE_FACTOR
    """Scales the floor on Start's registry read (`pace_factor: 0` turns it off)."""


@dataclass(frozen=True)
class RequesterPolicy:
    """One party allowed to query this node, with its budget per period.

    `templates` is None when every template the node allows is allowed.
    `node_share` is the part of the node's never-renewed cap this requester may
    spend over the node's lifetime, when the policy names it (else an equal share
    of what is left, see `Policy.node_share`).
    """

    name: str
    rho_per_period: float
    templates: frozenset[str] | None
    node_share: float | None = None


@dataclass(frozen=True)
class Reconciliation:
    """Whether this node takes part in revocation reconciliation, and with whom.

    Off by default at both ends: sharing revocations and learning about one's own
    recognitions are separate legal decisions of the municipality.
    """

    share_revocations: bool = False
    receive: bool = False
    peers: frozenset[str] | None = None  # None: any node of the federation

    def allows_peer(self, name: str) -> bool:
        return self.peers is None or name in self.peers


@dataclass(frozen=True)
class Policy:
    """The validated policy of one node. Build it with `parse_policy` or `load_policy`."""

    requesters: Mapping[str, RequesterPolicy]
    budget_period: str
    node_rho_total: float
    max_rho_per_request: float
    suppress_below: int
    bounds: Mapping[str, int]
    periods: tuple[str, ...]
    templates: frozenset[str] | None
    reconciliation: Reconciliation = Reconciliation()
    ring: RingPolicy = RingPolicy()
    node_reserved_rho: float = 0.0
    min_rho_per_query: float = DEFAULT_MIN_RHO_PER_QUERY
    first_cohort: str = ""
    """The first key of the `cohort` dimension ("YYYY-MM"; it also holds every earlier
    month). Empty means the first month of the first period year."""
    cohort_open_months: int = DEFAULT_COHORT_OPEN_MONTHS
    """A cohort is open while its month is at most this many months before an import's
    reference month: every such import makes questions about it new (replay keys)."""

    @property
    def cohort_start(self) -> str:
        """The first cohort key: `first_cohort`, else January of the first period."""
        return self.first_cohort or f"{self.periods[0]}-01"

    def node_share(self, requester: str) -> float:
        """The part of `node_rho_total` that `requester` may spend, over all periods.

        A share the policy names for the requester, else an equal part of what is
        neither reserved (`budget.node_reserved_rho`) nor named for another
        requester. Shares never add up to more than the node's total (the parser
        checks), so no requester can spend what belongs to another.
        """
        entry = self.requesters.get(requester)
        if entry is None:
            return 0.0
        if entry.node_share is not None:
            return entry.node_share
        named = math.fsum(r.node_share for r in self.requesters.values() if r.node_share)
        unnamed = sum(1 for r in self.requesters.values() if r.node_share is None)
        return max(0.0, self.node_rho_total - self.node_reserved_rho - named) / unnamed

    def period_of(self, now: dt.datetime) -> str:
        """The budget period key `now` falls in: "2026-11", "2026-Q4" or "2026".

        Aware datetimes are converted to UTC and naive ones are taken as UTC, so the
        key does not depend on the time zone of the machine the node runs on.
        """
        if now.tzinfo is not None:
            now = now.astimezone(dt.UTC)
        if self.budget_period == "month":
            return f"{now.year:04d}-{now.month:02d}"
        if self.budget_period == "quarter":
            return f"{now.year:04d}-Q{(now.month - 1) // 3 + 1}"
        return f"{now.year:04d}"

    def allows(self, requester: str, template: str) -> bool:
        """True when `requester` is named and both the node and its entry allow `template`.

        A template without a contribution bound is never allowed: the node could not
        bound what one person contributes to it.
        """
        entry = self.requesters.get(requester)
        if entry is None or template not in self.bounds:
            return False
        if self.templates is not None and template not in self.templates:
            return False
        return entry.templates is None or template in entry.templates

    def bound(self, template: str) -> int:
        """Records per person kept for `template` (its contribution bound)."""
        try:
            return self.bounds[template]
        except KeyError:
            raise PolicyError(f"no contribution bound for template {template!r}") from None


# --- parsing -------------------------------------------------------------------------------


class _Problem(Exception):
    """One invalid field: its dotted path and what is wrong (internal to parsing)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mapping(value: object, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    """Check `value` is a mapping whose keys are all in `allowed` (typos are errors)."""
    if not isinstance(value, Mapping):
        raise _Problem(path, f"must be a mapping, got {_show(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _Problem(path, f"keys must be text, got {_show(key)}")
        if key not in allowed:
            raise _Problem(_join(path, key), f"unknown key (allowed here: {', '.join(allowed)})")
    return value


def _positive_rho(value: object, path: str) -> float:
    """A finite number > 0 (bool is not a number here: `yes` must not become 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _Problem(path, f"must be a finite number > 0, got {_show(value)}")
    if value > MAX_RHO:
        raise _Problem(path, f"must be at most {MAX_RHO:g}, got {_show(value)}")
    return float(value)


def _integer(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Problem(path, f"must be an integer from {low} to {high}, got {_show(value)}")
    return value


def _templates(value: object, path: str) -> frozenset[str] | None:
    """`all` (None) or a list of known template names."""
    if value == "all":
        return None
    if not isinstance(value, list):
        raise _Problem(path, f"must be 'all' or a list of template names, got {_show(value)}")
    names: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item, str) or item not in KNOWN_TEMPLATES:
            raise _Problem(
                f"{path}[{i}]",
                f"unknown template {_show(item)} (known: {', '.join(sorted(KNOWN_TEMPLATES))})",
            )
        names.add(item)
    return frozenset(names)


def _requesters(value: object) -> dict[str, RequesterPolicy]:
    if not isinstance(value, Mapping):
        raise _Problem("requesters", f"must be a mapping of requester names, got {_show(value)}")
    if not value:
        raise _Problem("requesters", "must name at least one requester")
    result: dict[str, RequesterPolicy] = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not _REQUESTER_NAME.fullmatch(name):
            raise _Problem(
                "requesters",
                f"invalid requester name {_show(name)} (letters, digits, '.', '_', '@', '-'; "
                "starting with a letter or digit; at most 128 characters)",
            )
        path = f"requesters.{name}"
        fields = _mapping(entry, path, _REQUESTER_KEYS)
        if "rho_per_period" not in fields:
            raise _Problem(_join(path, "rho_per_period"), "is required")
        share = fields.get("node_share")
        result[name] = RequesterPolicy(
            name=name,
            rho_per_period=_positive_rho(fields["rho_per_period"], f"{path}.rho_per_period"),
            templates=_templates(fields.get("templates", "all"), f"{path}.templates"),
            node_share=None if share is None else _positive_rho(share, f"{path}.node_share"),
        )
    return result


def _check_shares(requesters: Mapping[str, RequesterPolicy], total: float, reserved: float) -> None:
    """Named shares and the reserve fit in the node's total, and unnamed requesters get some."""
    if reserved >= total:
        raise _Problem(
            "budget.node_reserved_rho",
            f"must be less than budget.node_rho_total ({total:g}), got {reserved:g}",
        )
    named = {n: r.node_share for n, r in requesters.items() if r.node_share is not None}
    committed = math.fsum(named.values()) + reserved
    if committed > total * (1 + 1e-12):
        raise _Problem(
            "requesters",
            f"the node_share values ({', '.join(f'{n}: {s:g}' for n, s in named.items())}) "
            f"plus budget.node_reserved_rho ({reserved:g}) add up to {committed:g}, more than "
            f"budget.node_rho_total ({total:g})",
        )
    unnamed = sorted(n for n, r in requesters.items() if r.node_share is None)
    if unnamed and total - committed <= 0:
        raise _Problem(
            "requesters",
            f"nothing of budget.node_rho_total is left for {', '.join(unnamed)} "
            "(give them a node_share or lower the others')",
        )


def _budget(value: object) -> tuple[str, float, float, float]:
    fields = _mapping(value, "budget", _BUDGET_KEYS)
    for key in _REQUIRED_BUDGET_KEYS:
        if key not in fields:
            raise _Problem(f"budget.{key}", "is required")
    period = fields["period"]
    if period not in PERIOD_KINDS:
        raise _Problem(
            "budget.period", f"must be one of {', '.join(PERIOD_KINDS)}, got {_show(period)}"
        )
    total = _positive_rho(fields["node_rho_total"], "budget.node_rho_total")
    per_request = _positive_rho(fields["max_rho_per_request"], "budget.max_rho_per_request")
    if per_request > total:
        raise _Problem(
            "budget.max_rho_per_request",
            f"must not exceed budget.node_rho_total ({total:g}), got {_show(per_request)}",
        )
    reserved = fields.get("node_reserved_rho", 0)
    if isinstance(reserved, bool) or not isinstance(reserved, int | float) or reserved < 0:
        raise _Problem("budget.node_reserved_rho", f"must be a number >= 0, got {_show(reserved)}")
    reserved = (
        float(reserved) if reserved == 0 else _positive_rho(reserved, "budget.node_reserved_rho")
    )
    return period, total, per_request, reserved


def _min_per_query(value: Mapping[str, Any], per_request: float) -> float:
    """The least charge of a query, never above the per-request maximum.

    (The ring's floor is `ring.min_rho`, see `RingPolicy`.)
    """
    if "min_rho_per_query" not in value:
        return min(DEFAULT_MIN_RHO_PER_QUERY, per_request)
    least = _positive_rho(value["min_rho_per_query"], "budget.min_rho_per_query")
    if least > per_request:
        raise _Problem(
            "budget.min_rho_per_query",
            f"must not exceed budget.max_rho_per_request ({per_request:g}), got {least:g}",
        )
    return least


def _bounds(value: object) -> dict[str, int]:
    fields = _mapping(value, "bounds", tuple(DEFAULT_BOUNDS))
    bounds = dict(DEFAULT_BOUNDS)
    for key, bound in fields.items():
        bounds[key] = _integer(bound, f"bounds.{key}", 1, MAX_BOUND)
    return bounds


def _periods(value: object, today: dt.date) -> tuple[str, ...]:
    if value is None:
        last = today.year
        first = last - DEFAULT_PERIOD_SPAN_YEARS
    else:
        fields = _mapping(value, "periods", _PERIODS_KEYS)
        for key in _PERIODS_KEYS:
            if key not in fields:
                raise _Problem(f"periods.{key}", "is required")
        first = _integer(fields["first"], "periods.first", MIN_YEAR, MAX_YEAR)
        last = _integer(fields["last"], "periods.last", MIN_YEAR, MAX_YEAR)
        if last < first:
            raise _Problem(
                "periods.last", f"must not be before periods.first ({first}), got {last}"
            )
    return tuple(str(year) for year in range(first, last + 1))


def _cohort_open_months(value: object) -> int:
    fields = _mapping(value, "cohorts", _COHORTS_KEYS)
    return _integer(
        fields.get("open_months", DEFAULT_COHORT_OPEN_MONTHS),
        "cohorts.open_months",
        0,
        MAX_COHORT_OPEN_MONTHS,
    )


def _first_cohort(value: object) -> str:
    fields = _mapping(value, "cohorts", _COHORTS_KEYS)
    first = fields.get("first", "")
    if first == "":
        return ""
    if not isinstance(first, str) or not _MONTH.fullmatch(first):
        raise _Problem("cohorts.first", f"must be a month as 'YYYY-MM', got {_show(first)}")
    if not MIN_YEAR <= int(first[:4]) <= MAX_YEAR:
        raise _Problem("cohorts.first", f"must be a year from {MIN_YEAR} to {MAX_YEAR}")
    return first


def _flag(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Problem(path, f"must be true or false, got {_show(value)}")
    return value


def _reconciliation(value: object) -> Reconciliation:
    fields = _mapping(value, "revocation_reconciliation", _RECONCILIATION_KEYS)
    peers = fields.get("peers")
    if peers is not None:
        path = "revocation_reconciliation.peers"
        if not isinstance(peers, list) or not all(isinstance(p, str) and p for p in peers):
            raise _Problem(path, f"must be a list of municipality codes, got {_show(peers)}")
        peers = frozenset(peers)
    return Reconciliation(
        share_revocations=_flag(
            fields.get("share_revocations", False), "revocation_reconciliation.share_revocations"
        ),
        receive=_flag(fields.get("receive", False), "revocation_reconciliation.receive"),
        peers=peers,
    )


def _ring(value: object) -> RingPolicy:
    fields = _mapping(value, "ring", _RING_KEYS)
    minimum = _integer(
        fields.get("min_municipalities", DEFAULT_RING_MIN_MUNICIPALITIES),
        "ring.min_municipalities",
        2,
        MAX_RING_MUNICIPALITIES,
    )
    peers_value = fields.get("allowed_peers", "all")
    peers: frozenset[str] | None = None
    if peers_value != "all":
        if not isinstance(peers_value, list) or not peers_value:
            raise _Problem(
                "ring.allowed_peers",
                f"must be 'all' or a non-empty list of node names, got {_show(peers_value)}",
            )
        for i, item in enumerate(peers_value):
            if not isinstance(item, str) or not _REQUESTER_NAME.fullmatch(item):
                raise _Problem(f"ring.allowed_peers[{i}]", f"not a node name: {_show(item)}")
        peers = frozenset(peers_value)
    min_rho = _positive_rho(fields.get("min_rho", DEFAULT_RING_MIN_RHO), "ring.min_rho")
    padding_value = fields.get("padding_rho", DEFAULT_RING_PADDING_RHO)
    padding = None if padding_value == "off" else _positive_rho(padding_value, "ring.padding_rho")
    delta = fields.get("padding_delta", DEFAULT_RING_PADDING_DELTA)
    if (
        isinstance(delta, bool)
        or not isinstance(delta, int | float)
        or not 0 < delta <= MAX_RING_PADDING_DELTA
    ):
        raise _Problem(
            "ring.padding_delta",
            f"must be a number > 0 and at most {MAX_RING_PADDING_DELTA:g}, got {_show(delta)}",
        )
    pace = fields.get("pace_factor", DEFAULT_RING_PACE_FACTOR)
    if (
        isinstance(pace, bool)
        or not isinstance(pace, int | float)
        or not 0 <= pace <= MAX_RING_PACE_FACTOR
    ):
        raise _Problem(
            "ring.pace_factor",
            f"must be a number from 0 (no floor) to {MAX_RING_PACE_FACTOR:g}, got {_show(pace)}",
        )
    return RingPolicy(
        min_municipalities=minimum,
        allowed_peers=peers,
        min_rho=min_rho,
        padding_rho=padding,
        padding_delta=float(delta),
        pace_factor=float(pace),
    )


def _parse(data: object, today: dt.date) -> Policy:
    if data is None:
        raise _Problem(
            "", "the document is empty; expected a mapping with version, requesters, budget"
        )
    top = _mapping(data, "", _TOP_KEYS)
    for key in _REQUIRED_TOP_KEYS:
        if key not in top:
            raise _Problem(key, "is required")
    version = top["version"]
    if isinstance(version, bool) or version != POLICY_VERSION:
        raise _Problem("version", f"must be {POLICY_VERSION}, got {_show(version)}")
    requesters = _requesters(top["requesters"])
    period, total, per_request, reserved = _budget(top["budget"])
    min_query = _min_per_query(top["budget"], per_request)
    _check_shares(requesters, total, reserved)
    reliability = _mapping(top.get("reliability", {}), "reliability", _RELIABILITY_KEYS)
    suppress_below = _integer(
        reliability.get("suppress_below", DEFAULT_SUPPRESS_BELOW),
        "reliability.suppress_below",
        0,
        MAX_SUPPRESS_BELOW,
    )
    return Policy(
        requesters=MappingProxyType(requesters),
        budget_period=period,
        node_rho_total=total,
        max_rho_per_request=per_request,
        suppress_below=suppress_below,
        bounds=MappingProxyType(_bounds(top.get("bounds", {}))),
        periods=_periods(top.get("periods"), today),
        templates=_templates(top.get("templates", "all"), "templates"),
        reconciliation=_reconciliation(top.get("revocation_reconciliation", {})),
        ring=_ring(top.get("ring", {})),
        node_reserved_rho=reserved,
        min_rho_per_query=min_query,
        first_cohort=_first_cohort(top.get("cohorts", {})),
        cohort_open_months=_cohort_open_months(top.get("cohorts", {})),
    )


def parse_policy(data: object, *, source: str = "<policy>") -> Policy:
    """Validate an already-loaded policy document (e.g. from `yaml.safe_load`).

    Raises `PolicyError` naming `source` and the dotted path of the first bad field.
    """
    try:
        return _parse(data, dt.datetime.now(dt.UTC).date())
    except _Problem as problem:
        raise PolicyError(f"{source}: {problem}") from None


def load_policy(path: Path) -> Policy:
    """Read, parse and validate the policy file at `path`.

    Raises `PolicyError` for an unreadable, oversized, non-UTF-8 or invalid file.
    """
    source = str(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"{source}: cannot read the policy file: {exc.strerror or exc}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"{source}: the policy file is larger than {MAX_POLICY_BYTES} bytes")
    try:
        data = load_yaml(raw)  # size, alias, depth and duplicate-key limits
    except YamlError as exc:
        raise PolicyError(f"{source}: {exc}") from None
    return parse_policy(data, source=source)


def example_policy(
    requesters: Mapping[str, float],
    *,
    node_rho_total: float | None = None,
    max_rho_per_request: float = 0.5,
    period: str = "quarter",
    reconciliation: bool = False,
    node_shares: Mapping[str, float] | None = None,
) -> Policy:
    """A permissive but valid policy for demos and tests: all templates, default bounds.

    `requesters` maps each requester name to its rho per period. The node-wide total
    defaults to the sum of those caps (at least `max_rho_per_request`), i.e. one
    period's worth of every requester. Each requester's share of the node total is
    `node_shares[name]` when given, else in proportion to its cap per period (with
    the default total: one period's worth). Goes through `parse_policy`, so it obeys
    every rule a real file does.
    """
    total = node_rho_total
    if total is None:
        total = max(sum(requesters.values()), max_rho_per_request)
    caps = math.fsum(requesters.values())
    shares = (
        dict(node_shares)
        if node_shares is not None
        else {name: total * rho / caps for name, rho in requesters.items()}
    )
    document = {
        "version": POLICY_VERSION,
        "requesters": {
            name: {"rho_per_period": rho, "templates": "all"}
            | ({"node_share": shares[name]} if name in shares else {})
            for name, rho in requesters.items()
        },
        "budget": {
            "period": period,
            "node_rho_total": total,
            "max_rho_per_request": max_rho_per_request,
        },
    }
    if reconciliation:
        document["revocation_reconciliation"] = {"share_revocations": True, "receive": True}
    return parse_policy(document, source="<example policy>")
