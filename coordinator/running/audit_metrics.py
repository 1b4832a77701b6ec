"""Prometheus metrics of audit runs, exported as a textfile or pushed to a Pushgateway.

An audit is a batch job: it lives for seconds to minutes, so Prometheus cannot scrape
it. We therefore record each run's outcome from its report and

- write it to a `.prom` file for node-exporter's textfile collector (plain servers,
  systemd timers: no extra service, and the file survives between runs), or
- push it to a Prometheus Pushgateway (Kubernetes CronJobs, whose pods are gone
  before any scrape), grouped by plan so runs of different plans do not overwrite
  each other.

Both carry last-run gauges, the values alerting needs ("the scheduled audit has not
succeeded for a day", "a node refused", "a critical finding"). The `_total` counters
accumulate only inside one process, so they are meaningful where a long-running
scheduler serves `registry` itself (`fedaudit.node.ops.metrics.start_metrics_server`).
No label carries personal data: plan, node names, statuses, reasons, severities.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    push_to_gateway,
    write_to_textfile,
)

log = structlog.get_logger(__name__)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
SEVERITIES = ("info", "warning", "critical")
RUN_STATUSES = ("complete", "partial", "failed")


class AuditMetrics:
    """Metric families of audit runs, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "fedaudit_audit_runs", "Audit runs, by plan and status.", ["plan", "status"], registry=r
        )
        self.node_outcomes = Counter(
            "fedaudit_audit_node_outcomes",
            "Node outcomes in audit runs, by plan, node, status and refusal reason.",
            ["plan", "node", "status", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "fedaudit_audit_duration_seconds",
            "Wall time of audit runs, by plan.",
            ["plan"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.last_status = Gauge(
            "fedaudit_audit_last_run_status",
            "1 for the status of the plan's latest run, 0 for the others.",
            ["plan", "status"],
            registry=r,
        )
        self.last_finished = Gauge(
            "fedaudit_audit_last_run_timestamp_seconds",
            "Unix time the plan's latest run finished.",
            ["plan"],
            registry=r,
        )
        self.last_success = Gauge(
            "fedaudit_audit_last_success_timestamp_seconds",
            "Unix time the plan's latest complete or partial run finished.",
            ["plan"],
            registry=r,
        )
        self.last_duration = Gauge(
            "fedaudit_audit_last_run_duration_seconds",
            "Wall time of the plan's latest run.",
            ["plan"],
            registry=r,
        )
        self.last_findings = Gauge(
            "fedaudit_audit_last_run_findings",
            "Findings of the plan's latest run, by severity.",
            ["plan", "severity"],
            registry=r,
        )
        self.last_node_status = Gauge(
            "fedaudit_audit_last_run_node_status",
            "1 for each node's outcome (status, reason) in the plan's latest run.",
            ["plan", "node", "status", "reason"],
            registry=r,
        )
        self.last_rho = Gauge(
            "fedaudit_audit_last_run_rho_charged",
            "Privacy budget (rho) each node charged in the plan's latest run.",
            ["plan", "node"],
            registry=r,
        )
        self.requester_remaining = Gauge(
            "fedaudit_audit_requester_rho_remaining",
            "Requester budget (rho) left at each node this period, as the node last reported.",
            ["plan", "node"],
            registry=r,
        )
        self._node_series: dict[str, set[tuple[str, ...]]] = {}

    def observe(self, report: Mapping[str, Any], duration_seconds: float) -> None:
        """Record one finished audit from its report (the dict `run_audit` returns)."""
        audit = report["audit"]
        plan, status = audit["plan"], audit["status"]
        self.runs.labels(plan=plan, status=status).inc()
        self.duration.labels(plan=plan).observe(duration_seconds)
        for s in {*RUN_STATUSES, status}:
            self.last_status.labels(plan=plan, status=s).set(1 if s == status else 0)
        finished = _timestamp(audit.get("finished_at"))
        self.last_finished.labels(plan=plan).set(finished)
        if status in ("complete", "partial"):
            self.last_success.labels(plan=plan).set(finished)
        self.last_duration.labels(plan=plan).set(duration_seconds)
        counts = dict.fromkeys(SEVERITIES, 0)
        for finding in report.get("findings", ()):
            counts[finding["severity"]] = counts.get(finding["severity"], 0) + 1
        for severity, n in counts.items():
            self.last_findings.labels(plan=plan, severity=severity).set(n)
        for labels in self._node_series.pop(plan, set()):  # only the latest run's nodes
            self.last_node_status.remove(*labels)
        for node in report.get("coverage", {}).get("nodes", ()):
            labels = {
                "plan": plan,
                "node": node["node"],
                "status": node["status"],
                "reason": node.get("reason") or "",
            }
            self.node_outcomes.labels(**labels).inc()
            self.last_node_status.labels(**labels).set(1)
            self._node_series.setdefault(plan, set()).add(tuple(labels.values()))
        for node in report.get("privacy", {}).get("nodes", ()):
            self.last_rho.labels(plan=plan, node=node["node"]).set(node.get("rho") or 0.0)
            remaining = node.get("requester_rho_remaining")
            if remaining is not None:
                self.requester_remaining.labels(plan=plan, node=node["node"]).set(remaining)

    def write_textfile(self, directory: Path, plan: str) -> Path:
        """Write the metrics atomically to `directory/fedaudit_audit_<plan>.prom`.

        One file per plan, so runs of different plans keep their own file.
        """
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"fedaudit_audit_{_slug(plan)}.prom"
        write_to_textfile(str(path), self.registry)  # writes a temporary file, then renames
        log.info("audit_metrics_written", path=str(path))
        return path

    def push(self, gateway: str, plan: str, *, timeout: float = 10.0) -> None:
        """Replace this plan's group on a Pushgateway (`job="fedaudit_audit"`, `plan=...`)."""
        push_to_gateway(
            gateway,
            job="fedaudit_audit",
            registry=self.registry,
            grouping_key={"plan": plan},
            timeout=timeout,
        )
        log.info("audit_metrics_pushed", gateway=gateway, plan=plan)


def export_audit_metrics(
    report: Mapping[str, Any],
    duration_seconds: float,
    *,
    textfile_dir: Path | None = None,
    pushgateway: str | None = None,
) -> AuditMetrics:
    """Record a finished audit and export it wherever the operator asked.

    A failed export is logged, not raised: the audit's report is the product, its
    metrics are a convenience, and a scheduled check must not fail for want of them.
    """
    metrics = AuditMetrics()
    metrics.observe(report, duration_seconds)
    plan = report["audit"]["plan"]
    if textfile_dir is not None:
        try:
            metrics.write_textfile(textfile_dir, plan)
        except OSError as exc:
            log.error("audit_metrics_write_failed", path=str(textfile_dir), error=exc.strerror)
    if pushgateway:
        try:
            metrics.push(pushgateway, plan)
        except OSError as exc:  # URLError and HTTPError are OSErrors
            log.error("audit_metrics_push_failed", gateway=pushgateway, error=str(exc))
    return metrics


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `audit run` and `schedule run` that export the run's metrics."""
    parser.add_argument(
        "--metrics-textfile",
        type=Path,
        metavar="DIR",
        help="write the run's metrics to DIR/fedaudit_audit_<plan>.prom (node-exporter textfile collector)",
    )
    parser.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the run's metrics to this Prometheus Pushgateway (job fedaudit_audit, grouped by plan)",
    )


def _timestamp(iso: str | None) -> float:
    if not iso:
        return dt.datetime.now(dt.UTC).timestamp()
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "plan"
