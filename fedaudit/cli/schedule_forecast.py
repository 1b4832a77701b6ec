"""`fedaudit schedule forecast PLAN --policy POLICY --years N`: an offline budget forecast.

Unlike `schedule check`, which asks live nodes, this reads only the plan and the node
policy (one for every node, or `--policy NODE=FILE` per node) and replays the plan's
slots under cohort accounting (`coordinator/scheduling/cohort_forecast.py`). It prints,
per node, the first date anything would be refused, or that nothing is refused within
N years, and the per-person loss bound at that date. Exit 0 when nothing is refused
within the horizon, 1 when something is, 2 for wrong input.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from fedaudit.cli.console import console
from fedaudit.cli.errors import EXIT_OK, CliError

EXIT_REFUSED = 1


def add_parser(sub: Any) -> None:
    """Add `forecast` to the `schedule` subcommands."""
    forecast = sub.add_parser(
        "forecast",
        help="offline: when would a schedule first be refused under cohort accounting?",
        description=(
            "Replay the plan's slots for --years against each node's policy (no node is "
            "contacted) and print per node the first date anything would be refused, or that "
            "nothing is refused, and the per-person loss bound then. Exit 0 nothing refused, "
            "1 something refused within the horizon, 2 wrong input."
        ),
    )
    forecast.add_argument("plan", type=Path, metavar="PLAN", help="audit plan with a schedule")
    forecast.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="[NODE=]POLICY",
        help="node policy YAML for every node, or NODE=FILE for one node (repeatable)",
    )
    forecast.add_argument(
        "--years", type=float, required=True, help="horizon in years (0 < N <= 100)"
    )
    forecast.add_argument(
        "--start", help="first day of the forecast, YYYY-MM-DD (default: today, UTC)"
    )
    forecast.add_argument(
        "--cohort-size",
        type=int,
        metavar="N",
        help="also print how wide one municipality's pass-rate and employment interval is "
        "for a cohort of N persons (planning aid, from the plan and the policy's bounds)",
    )
    forecast.set_defaults(handler=_forecast)


def _forecast(args: argparse.Namespace) -> int:
    from fedaudit.cli.shared import load_plan
    from fedaudit.coordinator.scheduling.cohort_forecast import MAX_YEARS, forecast_cohorts

    plan = load_plan(args.plan)
    if not plan.schedule:
        raise CliError(f"{args.plan}: the plan has no `schedule` (a 5-field cron expression, UTC)")
    if not plan.nodes:
        raise CliError(f"{args.plan}: the plan names no nodes, so there is nothing to forecast")
    if not 0 < args.years <= MAX_YEARS:
        raise CliError(f"--years: must be a number in (0, {MAX_YEARS}] (got {args.years:g})")
    start = _start(args.start)
    if args.cohort_size is not None and args.cohort_size < 1:
        raise CliError(
            f"--cohort-size: must be a whole number of persons >= 1 (got {args.cohort_size})"
        )
    policies = _policies(args.policy, [n.name for n in plan.nodes])
    rules = [
        _rules(node, path, policy, plan.requester) for node, (path, policy) in policies.items()
    ]
    results = forecast_cohorts(plan, rules, start, args.years)
    console.print(
        f"plan {plan.name} ({plan.schedule} UTC) from {start:%Y-%m-%d} for {args.years:g} years, "
        f"requester {plan.requester}; caps per cohort (persons by the month of their first "
        "record); assumes this requester is the only one spending and every run is answered",
        markup=False,
        soft_wrap=True,
    )
    for result in results:
        console.print(result.message(), markup=False, highlight=False, soft_wrap=True)
    if args.cohort_size is not None:
        _print_accuracy(plan, policies, args.cohort_size)
    return EXIT_REFUSED if any(r.refusal is not None for r in results) else EXIT_OK


def _print_accuracy(plan: Any, policies: dict[str, tuple[Path, Any]], size: int) -> None:
    from fedaudit.coordinator.scheduling.cohort_forecast import rate_accuracy

    for node, (_path, policy) in policies.items():
        parts = [
            f"{a.check} +/-{a.half_width:.3f} (noise sd {a.noise_sd:.3g} person(s) per count)"
            for a in rate_accuracy(plan, policy.bounds, size)
        ]
        console.print(
            f"node {node}, cohorts of {size} persons: "
            + ("; ".join(parts) or "no rate check")
            + f" (one interval at {100 * plan.confidence:g}% for a rate of 0.5, before the "
            "audit's multiple-testing adjustment)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _start(text: str | None) -> dt.datetime:
    if text is None:
        now = dt.datetime.now(dt.UTC)
        return dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise CliError(f"--start: expected a date YYYY-MM-DD (got {text!r})") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _policies(options: list[str], nodes: list[str]) -> dict[str, tuple[Path, Any]]:
    """Each plan node's policy: the NODE=FILE one, else the one given without a node name."""
    from fedaudit.node.errors import PolicyError
    from fedaudit.node.privacy.policy import load_policy

    default: Path | None = None
    per_node: dict[str, Path] = {}
    for option in options:
        name, sep, path = option.partition("=")
        if sep and name in nodes:
            per_node[name] = Path(path)
        elif sep and not Path(option).exists():
            raise CliError(
                f"--policy {option!r}: {name!r} is not a node of the plan "
                f"(its nodes: {', '.join(nodes)})"
            )
        elif default is not None:
            raise CliError(
                "--policy: give one policy without a node name, and NODE=FILE for others"
            )
        else:
            default = Path(option)
    missing = [n for n in nodes if n not in per_node and default is None]
    if missing:
        raise CliError(f"--policy: no policy for node(s) {', '.join(missing)}")
    loaded: dict[Path, Any] = {}
    out: dict[str, tuple[Path, Any]] = {}
    for node in nodes:
        path = per_node.get(node, default)
        assert path is not None
        if path not in loaded:
            try:
                loaded[path] = load_policy(path)
            except PolicyError as exc:
                raise CliError(f"--policy: {exc}") from None
        out[node] = (path, loaded[path])
    return out


def _rules(node: str, path: Path, policy: Any, requester: str) -> Any:
    from fedaudit.coordinator.scheduling.cohort_forecast import BudgetRules

    entry = policy.requesters.get(requester)
    if entry is None:
        known = ", ".join(sorted(policy.requesters)) or "none"
        raise CliError(
            f"{path}: the plan's requester {requester!r} is not in this policy "
            f"(requesters: {known}); node {node} would refuse every query"
        )
    return BudgetRules(
        node=node,
        period_kind=policy.budget_period,
        rho_per_period=entry.rho_per_period,
        node_share=policy.node_share(requester),
        node_rho_total=policy.node_rho_total,
        max_rho_per_request=policy.max_rho_per_request,
        min_rho_per_query=policy.min_rho_per_query,
        ring_min_rho=policy.ring.min_rho,
        first_cohort=_first_cohort(policy),
    )


def _first_cohort(policy: Any) -> str:
    """The policy's first cohort: its own setting when it has one, else January of its first
    period year (docs/scheduling.md, "Cohort accounting")."""
    first = getattr(policy, "first_cohort", None)
    if isinstance(first, str) and first:
        return first
    return f"{min(policy.periods)}-01"
