"""Interval widths of the monthly cohort metrics for 3,000-candidate municipalities.

Generates a synthetic federation (fedaudit/synthetic: 3 municipalities of 3,000 candidates
each, records from 2021 to the export cut-off), imports each into a node holding
deploy/policy.monthly.yaml, and runs deploy/plans/monthly.yaml in-process for each of the
last N run months (each run asks its own cohorts, so nothing is charged twice). Prints, per
run month, the size of the cohorts asked and the width of the municipality-level pass-rate
and employment-rate intervals (the report's `ci`: DP noise and sampling, at the metric's own
level: a tested metric's Holm-adjusted test interval, otherwise the plan's 95 %), then the
medians.

    .venv/bin/python bench/cohort_widths.py [--candidates 3000] [--months 12]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import tempfile
from pathlib import Path

import structlog

from fedaudit.coordinator.planning.cohort_runs import plan_for_run, report_section
from fedaudit.coordinator.planning.cohorts import add_months
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.inprocess import InProcessNodeTransport
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.policy import load_policy
from fedaudit.node.query.service import NodeService
from fedaudit.node.store.db import make_engine
from fedaudit.synthetic.federation import generate_federation

ROOT = Path(__file__).resolve().parent.parent
TODAY = dt.date(2027, 4, 1)  # export cut-off 30 days earlier: March 2027 is complete to the 2nd
LAST_RUN = "2027-03"
METRICS = ("pass_rate", "employment_rate_12m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=3000)
    parser.add_argument("--months", type=int, default=12)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    plan = load_plan(ROOT / "deploy" / "plans" / "monthly.yaml")
    policy = load_policy(ROOT / "deploy" / "policy.monthly.yaml")
    widths: dict[str, list[float]] = {m: [] for m in METRICS}
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        fed = generate_federation(
            root / "fed", municipalities=3, candidates_per_municipality=args.candidates, today=TODAY
        )
        services = {}
        now = dt.datetime(2027, 3, 2, 6, tzinfo=dt.UTC)
        for code, bundle in zip(fed.municipalities, fed.bundles, strict=True):
            engine = make_engine(f"sqlite:///{root / code}.db")
            import_bundle(engine, bundle, now=now)
            services[code] = NodeService(engine, policy, clock=lambda: now)
        plan = plan.with_nodes({c: f"127.0.0.1:{5000 + i}" for i, c in enumerate(services)})
        print(f"{args.candidates} candidates per municipality, {len(services)} municipalities")
        for back in range(args.months - 1, -1, -1):
            month = add_months(LAST_RUN, -back)
            narrowed = plan_for_run(plan, month)
            transports = {
                c: InProcessNodeTransport(c, s, requester=plan.requester)
                for c, s in services.items()
            }
            report = run_audit(
                narrowed,
                transports,
                run_id=f"{plan.name}-{month}",
                cohorts=report_section(plan, narrowed),
                clock=lambda: now,
            )
            asked = report["audit"]["cohorts"]["asked"]
            line = [f"run {month}: {report['audit']['status']}"]
            for metric in report["metrics"]:
                subject = metric["subject"]
                if metric["metric"] not in METRICS or any(
                    subject.get(k) for k in ("provider_id", "isco_code", "group")
                ):
                    continue
                low, high = metric["ci"]
                widths[metric["metric"]].append(high - low)
                check = "pass_rates" if metric["metric"] == "pass_rate" else "employment"
                line.append(
                    f"{subject['municipality']} {metric['metric']} cohort {asked[check][0]}: "
                    f"{metric['estimate']:.3f} [{low:.3f}, {high:.3f}] width {high - low:.3f} "
                    f"(n~{metric['denominator']:.0f})"
                )
            print("\n  ".join(line))
    for metric, values in widths.items():
        if values:
            print(
                f"{metric}: median interval width {statistics.median(values):.3f} "
                f"(min {min(values):.3f}, max {max(values):.3f}, {len(values)} intervals)"
            )
        else:
            print(f"{metric}: no municipality-level interval released")


if __name__ == "__main__":
    main()
