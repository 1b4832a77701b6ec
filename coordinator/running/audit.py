"""Running an audit plan: fan out to the nodes, collect answers, evaluate, build the report.

Each node is handled in its own thread with the plan's deadline. Before spending
anything at a node, the coordinator pre-flights every query there (free) and
skips the node when the whole audit would not fit its remaining budget, so an
audit never leaves a node half-charged for nothing. Request ids derive from the
run id, node and query, so re-running the same run after a crash replays stored
answers instead of charging again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from fedaudit import __version__
from fedaudit.common.mechanisms import epsilon_equivalent
from fedaudit.coordinator.errors import (
    CoordinatorError,
    NodeRefusedError,
    NodeTimeoutError,
    NodeUnavailableError,
)
from fedaudit.coordinator.planning.checks import COHORT, PlannedQuery, planned_queries
from fedaudit.coordinator.planning.cohort_runs import plan_for_run, report_section
from fedaudit.coordinator.planning.cohorts import month_of
from fedaudit.coordinator.planning.plan import AuditPlan
from fedaudit.coordinator.ring.config import config_from_plan
from fedaudit.coordinator.ring.reconcile import ReconcileTransport, run_reconciliation
from fedaudit.coordinator.ring.relay import DedupTransport
from fedaudit.coordinator.ring.run import DedupOutcome, run_dedup
from fedaudit.coordinator.running.outcome import verdict
from fedaudit.coordinator.running.transport import NodeInfo, NodeTransport
from fedaudit.coordinator.statistics.gaps import evaluate
from fedaudit.coordinator.statistics.wording import split_sentence
from fedaudit.node.domain import Answer, BudgetStatus, Preflight

log = structlog.get_logger(__name__)

EQUIVALENCE_DELTA = 1e-7
ProgressCallback = Callable[[str, str], None]
"""Called with (node name, event) as queries finish; the CLI draws a progress bar from it."""

AnswerCallback = Callable[[str, str, str, Answer], None]
"""Called with (node name, request id, query key, answer) for every answer received, e.g. to
keep the coordinator's own record of what each node released."""

RefusalCallback = Callable[[str, str, str, str, NodeRefusedError], None]
"""Called with (node name, municipality code, request id, query key, refusal) for every query
a node refused, e.g. to record the log head the refusal carries (`record.AnswerRecord`)."""


@dataclass
class QueryOutcome:
    check: str
    key: str
    template: str
    status: str  # answered | refused | timed_out | unavailable | skipped
    reason: str = ""
    message: str = ""
    answer: Answer | None = None
    budget: BudgetStatus | None = None


@dataclass
class NodeOutcome:
    name: str
    address: str
    info: NodeInfo | None = None
    status: str = "unavailable"
    reason: str = ""
    message: str = ""
    queries: list[QueryOutcome] = field(default_factory=list)

    def answers(self) -> dict[str, Answer]:
        return {q.key: q.answer for q in self.queries if q.answer is not None}


def default_run_id(plan: AuditPlan, now: dt.datetime) -> str:
    """One run per plan and day unless the caller names the run."""
    return f"{plan.name}-{now:%Y-%m-%d}"


def request_id_for(run_id: str, node: str, key: str) -> str:
    digest = hashlib.sha256(f"{run_id}\x00{node}\x00{key}".encode()).hexdigest()[:32]
    return f"fa-{digest}"


def run_audit(
    plan: AuditPlan,
    transports: Mapping[str, NodeTransport],
    *,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    on_answer: AnswerCallback | None = None,
    on_refusal: RefusalCallback | None = None,
    dedup_transports: Mapping[str, DedupTransport] | None = None,
    reconcile_transports: Mapping[str, ReconcileTransport] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    cohorts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `plan` against the given node transports and return the report as a dict.

    A cohort plan (`plan.cohorts`) not yet narrowed to a run is narrowed here to the
    cohorts due in the month the run starts (`planning.cohort_runs`); a scheduler that
    narrowed it against its archive passes the resulting report section as `cohorts`.

    With a `duplicates` check and `dedup_transports`, the blinding ring runs after the
    quality queries. The audit's error budget is then split in two halves (Bonferroni
    across the two families, Holm or gatekeeping within each), so the stated confidence
    holds for the audit as a whole.
    """
    started = clock()
    if plan.cohorts is not None and plan.run_month is None:
        full = plan
        plan = plan_for_run(plan, month_of(started))
        cohorts = report_section(full, plan)
    run_ring = config_from_plan(plan) is not None and bool(dedup_transports)
    family_plan = replace(plan, confidence=1.0 - (1.0 - plan.confidence) / 2) if run_ring else plan
    run_id = run_id or default_run_id(plan, started)
    queries = planned_queries(plan)
    deadline = time.monotonic() + plan.deadline_seconds
    log.info(
        "audit_started", plan=plan.name, run_id=run_id, nodes=len(transports), queries=len(queries)
    )

    with ThreadPoolExecutor(
        max_workers=max(1, len(transports)), thread_name_prefix="fan-out"
    ) as pool:
        futures = {
            name: pool.submit(
                _run_node,
                name,
                transport=t,
                queries=queries,
                run_id=run_id,
                deadline=deadline,
                progress=progress,
                on_answer=on_answer,
                on_refusal=on_refusal,
            )
            for name, t in transports.items()
        }
        outcomes = {name: f.result() for name, f in futures.items()}

    answering = [o for o in outcomes.values() if o.status in ("answered", "partial")]
    status, status_reason = "complete", ""
    parts: dict[str, Any] = {"findings": [], "metrics": [], "error_control": None}
    missing = _missing_words(outcomes.values(), answering)
    if len(answering) < plan.min_answering_nodes:
        status = "failed"
        status_reason = (
            f"only {len(answering)} of {len(outcomes)} nodes answered; the plan needs at least "
            f"{plan.min_answering_nodes}, so no regional comparison was made"
            + (f"; {missing}" if missing else "")
        )
    else:
        evaluation = evaluate(
            plan, {o.name: o.answers() for o in answering}, alpha_share=0.5 if run_ring else 1.0
        )
        parts = evaluation.to_report_parts()
        if len(answering) < len(outcomes) or any(o.status == "partial" for o in answering):
            status = "partial"
            status_reason = (
                f"{len(answering)} of {len(outcomes)} nodes answered"
                + (f"; {missing}" if missing else "")
                + "; findings cover the answering nodes only"
            )
    ring_left_out = (cohorts or {}).get("left_out", {}).get("duplicates")
    duplicates = _not_run(
        f"not part of this run: the blinding ring {ring_left_out}"
        if ring_left_out
        else "the plan has no duplicates check"
        if config_from_plan(plan) is None
        else "no dedup connections to the nodes were given"
    )
    dedup = None
    if run_ring and dedup_transports is not None:
        dedup = run_dedup(family_plan, dedup_transports, run_id)
        duplicates = dedup.duplicates_section
        parts["findings"] = [*parts["findings"], *_renumber(dedup.findings, "F", parts["findings"])]
        parts["metrics"] = [*parts["metrics"], *_renumber(dedup.metrics, "M", parts["metrics"])]
        # The ring's half is tested at 1 - alpha/2; its sentences state the audit-wide level.
        family = f"at {100 * family_plan.confidence:g}% confidence"
        audit_wide = f"at {100 * plan.confidence:g}% confidence"
        parts["findings"] = [
            {**f, "summary": f["summary"].replace(family, audit_wide)} for f in parts["findings"]
        ]
        if parts["error_control"] is not None:
            ec = dict(parts["error_control"])
            ec["description"] += split_sentence(plan.confidence, ec["tests"], dedup.tests)
            parts["error_control"] = ec
    reconciliation = None
    if plan.checks.revocation is not None and reconcile_transports:
        rho = plan.checks.revocation.budget.rho_charged()
        reconciliation = run_reconciliation(
            reconcile_transports, run_id, rho=rho, confidence=plan.confidence
        ).to_report()
    ring_status = dedup.duplicates_section["status"] if dedup is not None else "not_run"
    if dedup is not None and ring_status in ("failed", "partial") and status != "failed":
        # The plan asked for duplicate detection: without it the audit is not complete.
        ring_why = _ring_reason(ring_status, dedup.duplicates_section["reason"])
        status_reason = f"{status_reason}; {ring_why}" if status_reason else ring_why
        status = "partial"
    if reconciliation is not None and reconciliation["status"] != "complete" and status != "failed":
        # Likewise for revocation reconciliation: pairs it could not check were not checked.
        why = _reconcile_reason(reconciliation)
        status_reason = f"{status_reason}; {why}" if status_reason else why
        status = "partial"
    parts["findings"] = _by_severity(parts["findings"])
    finished = clock()
    log.info(
        "audit_finished",
        plan=plan.name,
        run_id=run_id,
        status=status,
        findings=len(parts["findings"]),
    )
    report = {
        "schema_version": "1.0",
        "audit": {
            "plan": plan.name,
            "run_id": run_id,
            "requester": plan.requester,
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "confidence": plan.confidence,
            "mechanism": plan.mechanism.value,
            "error_control": parts["error_control"] or _no_tests(plan),
            "tolerances": plan.tolerances(),
            "software_version": __version__,
            "status": status,
            "status_reason": status_reason,
        },
        "findings": parts["findings"],
        "not_assessable": parts.get("not_assessable", []),
        "duplicates": duplicates,
        "metrics": parts["metrics"],
        "coverage": _coverage(plan, outcomes),
        "privacy": _privacy(plan, outcomes, dedup, reconciliation),
    }
    if reconciliation is not None:
        report["reconciliation"] = reconciliation
    if cohorts is not None:
        report["audit"]["cohorts"] = dict(cohorts)
    report["audit"]["verdict"] = verdict(report)
    return report


SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _missing_words(outcomes: Iterable[NodeOutcome], answering: list[NodeOutcome]) -> str:
    """Each node that did not answer (fully), with why in its own words."""
    lines = []
    for o in sorted(outcomes, key=lambda o: o.name):
        if o.status == "answered":
            continue
        why = o.message or o.reason or o.status
        what = "answered only some queries" if o in answering else o.status.replace("_", " ")
        lines.append(f"{o.name} {what}: {why}")
    return "; ".join(lines)


def _by_severity(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Findings most severe first (stable within a severity), numbered F001... in that order."""
    ordered = sorted(findings, key=lambda f: SEVERITY_ORDER[f["severity"]])
    return [{**f, "id": f"F{i:03d}"} for i, f in enumerate(ordered, start=1)]


def _ring_reason(ring_status: str, reason: str) -> str:
    """Why the audit is partial when the blinding ring failed or covered only some nodes."""
    if ring_status == "failed":
        return (
            f"duplicate detection could not run ({reason}), so duplicates, assessment "
            "shopping and revoked-but-recognised certificates were not checked"
        )
    return f"duplicate detection covered only some nodes ({reason})"


def _reconcile_reason(reconciliation: Mapping[str, Any]) -> str:
    """Why the audit is partial when revocation reconciliation failed or skipped pairs."""
    refused = reconciliation.get("refused") or {}
    skipped = reconciliation.get("skipped_pairs") or []
    details = [f"{node}: {why}" for node, why in sorted(refused.items())]
    if skipped:
        details.append(f"{len(skipped)} pair(s) of nodes not checked")
    listing = f" ({'; '.join(details)})" if details else ""
    if reconciliation["status"] == "failed":
        return f"revocation reconciliation could not run{listing}"
    return f"revocation reconciliation covered only some nodes{listing}"


def _not_run(reason: str) -> dict[str, Any]:
    return {
        "status": "not_run",
        "reason": reason,
        "overall": None,
        "per_occupation": [],
        "overlap_histogram": [],
        "pairwise": [],
    }


def _renumber(items: list[dict[str, Any]], prefix: str, after: list[dict[str, Any]]) -> list:
    """Continue the report's F001.../M0001... numbering for items from another family."""
    width = 3 if prefix == "F" else 4
    start = len(after) + 1
    return [{**item, "id": f"{prefix}{start + i:0{width}d}"} for i, item in enumerate(items)]


def _run_node(
    name: str,
    *,
    transport: NodeTransport,
    queries: list[PlannedQuery],
    run_id: str,
    deadline: float,
    progress: ProgressCallback | None,
    on_answer: AnswerCallback | None = None,
    on_refusal: RefusalCallback | None = None,
) -> NodeOutcome:
    outcome = NodeOutcome(name=name, address=transport.address)

    def remaining() -> float:
        return deadline - time.monotonic()

    def report(event: str) -> None:
        if progress is not None:
            progress(name, event)

    try:
        outcome.info = transport.info(timeout=max(0.001, remaining()))
        # Pre-flight the whole audit at this node: free, and it keeps a node that cannot
        # afford the audit from being charged for a part of it.
        priced = [
            (
                q,
                transport.preflight(
                    q.spec, request_id_for(run_id, name, q.key), timeout=max(0.001, remaining())
                ),
            )
            for q in queries
        ]
        _check_affordable(name, priced)
    except CoordinatorError as exc:
        _mark_all(outcome, queries, exc)
        for _ in queries:
            report("failed")
        return outcome

    for q in queries:
        rid = request_id_for(run_id, name, q.key)
        qo = QueryOutcome(check=q.check, key=q.key, template=q.spec.template, status="answered")
        try:
            if remaining() <= 0:
                raise NodeTimeoutError(name, "the audit deadline passed before this query was sent")
            qo.answer, qo.budget = transport.query(q.spec, rid, timeout=remaining())
            if on_answer is not None:
                on_answer(name, rid, q.key, qo.answer)
        except CoordinatorError as exc:
            qo.status, qo.reason, qo.message = _classify(exc)
            if on_refusal is not None and isinstance(exc, NodeRefusedError):
                code = outcome.info.municipality_code if outcome.info else ""
                on_refusal(name, code, rid, q.key, exc)
        outcome.queries.append(qo)
        report(qo.status)

    statuses = {q.status for q in outcome.queries}
    if statuses == {"answered"}:
        outcome.status = "answered"
    elif "answered" in statuses:
        outcome.status = "partial"
        first = next(q for q in outcome.queries if q.status != "answered")
        outcome.reason, outcome.message = first.reason, first.message
    else:
        first = outcome.queries[0]
        outcome.status, outcome.reason, outcome.message = first.status, first.reason, first.message
    return outcome


def _check_affordable(name: str, priced: list[tuple[PlannedQuery, Preflight]]) -> None:
    """Refuse (before anything is charged) an audit this node cannot afford in full.

    A node with cohort accounting charges each query to the cohorts it reads, and its
    preflight reports what is left for the cohort among them that has spent most. So each
    query must fit together with every other query that reads any of its cohorts (a query
    without a cohort filter reads them all): for a node without cohorts, or an audit over
    all years, that is the whole audit against the one budget, as before.
    """
    for q, pre in priced:
        mine = q.spec.filters.get(COHORT)
        total = math.fsum(
            other_pre.charge.rho
            for other, other_pre in priced
            if mine is None
            or other.spec.filters.get(COHORT) is None
            or set(mine) & set(other.spec.filters[COHORT])
        )
        budget = pre.budget
        available = min(budget.requester_rho_remaining, budget.node_rho_remaining)
        if total > available + 1e-12:
            where = f"in period {budget.period}"
            if budget.cohort:
                where += f" for cohort {budget.cohort}"
            raise NodeRefusedError(
                name,
                "BUDGET_EXHAUSTED",
                f"this audit costs rho={total:.4g} at this node, but only rho={available:.4g} "
                f"remains {where}",
                {"requested_rho": f"{total:.6g}", "remaining_rho": f"{available:.6g}"},
            )


def _classify(exc: CoordinatorError) -> tuple[str, str, str]:
    if isinstance(exc, NodeRefusedError):
        return "refused", exc.reason, exc.message
    if isinstance(exc, NodeTimeoutError):
        return "timed_out", "", str(exc)
    if isinstance(exc, NodeUnavailableError):
        return "unavailable", "", str(exc)
    return "unavailable", "", str(exc)


def _mark_all(outcome: NodeOutcome, queries: list[PlannedQuery], exc: CoordinatorError) -> None:
    status, reason, message = _classify(exc)
    outcome.status, outcome.reason, outcome.message = status, reason, message
    outcome.queries = [
        QueryOutcome(
            check=q.check,
            key=q.key,
            template=q.spec.template,
            status="skipped",
            reason=reason,
            message="not sent: " + (message or status),
        )
        for q in queries
    ]


def _coverage(plan: AuditPlan, outcomes: Mapping[str, NodeOutcome]) -> dict[str, Any]:
    nodes = []
    for o in outcomes.values():
        nodes.append(
            {
                "node": o.name,
                "address": o.address,
                "status": o.status,
                "reason": o.reason,
                "message": o.message,
                "data_version": o.info.data_version if o.info else "",
                "catalogue_version": o.info.catalogue_version if o.info else "",
                "queries": [
                    {
                        "check": q.check,
                        "template": q.template,
                        "status": q.status,
                        "reason": q.reason,
                        "message": q.message,
                        "replayed": bool(q.answer and q.answer.replayed),
                    }
                    for q in o.queries
                ],
            }
        )
    answering = sum(1 for o in outcomes.values() if o.status in ("answered", "partial"))
    return {
        "required": plan.min_answering_nodes,
        "answering": answering,
        "complete": all(o.status == "answered" for o in outcomes.values()),
        "nodes": nodes,
    }


def _privacy(
    plan: AuditPlan,
    outcomes: Mapping[str, NodeOutcome],
    dedup: DedupOutcome | None,
    reconciliation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    joined: set[str] = set()
    ring_rho = 0.0
    after_ring = 0.0
    config = config_from_plan(plan)
    if dedup is not None and dedup.ring is not None and config is not None:
        # Each node that joined the ring charged the check's cost to its own ledger.
        joined = set(dedup.ring.municipalities)
        ring_rho = config.rho if config.rho else (config.epsilon or 0.0) ** 2 / 2
        # The ring runs after the queries, so the last budget a node reported predates its
        # charge: what is left afterwards is that much less (zCDP charges only).
        after_ring = config.rho or 0.0
    nodes = []
    for o in outcomes.values():
        charged = [q.answer for q in o.queries if q.answer is not None and not q.answer.replayed]
        code = o.info.municipality_code if o.info else o.name
        # Revocation reconciliation runs last and charges each recogniser's own ledger.
        released = (reconciliation or {}).get("per_municipality", {})
        own = released.get(code) or released.get(o.name) or {}
        reconcile_rho = 0.0 if own.get("replayed", True) else float(own.get("rho") or 0.0)
        rho = math.fsum(a.charge.rho for a in charged) + (ring_rho if code in joined else 0.0)
        rho += reconcile_rho
        spent_after = (after_ring if code in joined else 0.0) + reconcile_rho
        epsilons = [a.charge.epsilon for a in charged if a.charge.epsilon]
        budgets = [q.budget for q in o.queries if q.budget is not None]
        last = budgets[-1] if budgets else (o.info.budget if o.info else None)
        nodes.append(
            {
                "node": o.name,
                "rho": rho,
                # Pure-DP answers also state epsilon (basic composition over those answers).
                "epsilon": math.fsum(epsilons) if epsilons else None,
                "delta": 0.0,
                "epsilon_equivalent": (
                    epsilon_equivalent(rho, EQUIVALENCE_DELTA) if rho > 0 else None
                ),
                "equivalence_delta": EQUIVALENCE_DELTA,
                "queries": len(charged),
                "replayed": sum(1 for q in o.queries if q.answer is not None and q.answer.replayed),
                "budget_period": last.period if last else "",
                "requester_rho_cap": last.requester_rho_cap if last else None,
                "requester_rho_remaining": _left(last.requester_rho_remaining, spent_after)
                if last
                else None,
                "node_rho_remaining": _left(last.node_rho_remaining, spent_after) if last else None,
            }
        )
    max_rho = max((n["rho"] for n in nodes), default=0.0)
    extra = {"coordinator": dedup.privacy} if dedup is not None else {}
    return {
        **extra,
        "unit": "person (candidate) within one municipality's registry",
        "nodes": nodes,
        "total_rho": math.fsum(n["rho"] for n in nodes),
        "platform_bound": (
            "Each node protects the people in its own registry. A person registered in k "
            f"municipalities is covered by k node budgets: for this audit at most k x {max_rho:.4g} "
            "rho (zCDP; losses add up across nodes and audits)."
        ),
        "mechanism_note": (
            "Counts carry discrete Gaussian (zCDP) or discrete Laplace noise added by each node "
            "with OpenDP; the coordinator only combines released values (post-processing, free)."
        ),
    }


def _left(reported: float, spent_after: float) -> float:
    """What is left once charges made after the node's last budget report are taken off."""
    return max(0.0, reported - spent_after)


def _no_tests(plan: AuditPlan) -> dict[str, Any]:
    return {
        "method": "none",
        "tests": 0,
        "family_confidence": plan.confidence,
        "per_test_confidence": plan.confidence,
        "description": "No tests were performed because too few nodes answered.",
    }


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
