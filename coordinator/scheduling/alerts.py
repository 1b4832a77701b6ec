"""Alerts for scheduled audits: decide whether a run deserves attention, and tell someone.

A run alerts when a finding reaches the severity threshold, or when the audit did not
cover every node (partial or failed): an unattended check that silently skipped a
municipality is a check that did not happen.

The optional webhook receives a small JSON summary: plan, run, status, and per finding
only its kind, subject (public codes: municipality, provider, occupation, group) and
severity, plus where the report is archived. No estimate, no personal data: the body
may pass through chat or ticket systems that are not covered by the federation's rules.
Delivery has a timeout and a few retries; failures are logged and never raised, so a
broken webhook cannot stop the scheduler.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger(__name__)

SEVERITIES = ("info", "warning", "critical")
PAYLOAD_VERSION = 1
_SUBJECT_KEYS = ("municipality", "provider_id", "isco_code", "group")


@dataclass(frozen=True)
class Alert:
    """Why a run alerts (`reasons`: "findings" and/or "incomplete") and what to say."""

    plan: str
    run_id: str
    slot: str
    status: str
    status_reason: str
    threshold: str | None
    reasons: tuple[str, ...]
    findings: tuple[Mapping[str, Any], ...]
    report_path: str
    missed_slots: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        """The webhook body: counts and public codes only."""
        return {
            "version": PAYLOAD_VERSION,
            "source": "fedaudit-schedule",
            "plan": self.plan,
            "run_id": self.run_id,
            "slot": self.slot,
            "status": self.status,
            "status_reason": self.status_reason,
            "reasons": list(self.reasons),
            "threshold": self.threshold,
            "findings": [dict(f) for f in self.findings],
            "report": self.report_path,
            "missed_slots": list(self.missed_slots),
        }


def _at_or_above(severity: str, threshold: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)


def evaluate_alert(
    report: Mapping[str, Any],
    threshold: str | None,
    *,
    report_path: str,
    slot: str = "",
    missed: Sequence[str] = (),
    alert_on_incomplete: bool = True,
) -> Alert | None:
    """The alert for a finished run, or None when nothing needs attention.

    With `threshold` None findings never alert (only an incomplete audit does).
    """
    if threshold is not None and threshold not in SEVERITIES:
        raise ValueError(f"unknown severity {threshold!r}; use one of {', '.join(SEVERITIES)}")
    audit = report["audit"]
    hits = [f for f in report["findings"] if threshold and _at_or_above(f["severity"], threshold)]
    reasons = []
    if hits:
        reasons.append("findings")
    if alert_on_incomplete and audit["status"] != "complete":
        reasons.append("incomplete")
    if not reasons:
        return None
    return Alert(
        plan=audit["plan"],
        run_id=audit["run_id"],
        slot=slot,
        status=audit["status"],
        status_reason=audit.get("status_reason", ""),
        threshold=threshold,
        reasons=tuple(reasons),
        findings=tuple(
            {
                "kind": f["kind"],
                "severity": f["severity"],
                "subject": {k: f["subject"][k] for k in _SUBJECT_KEYS if f["subject"].get(k)},
            }
            for f in hits
        ),
        report_path=report_path,
        missed_slots=tuple(missed),
    )


class Notifier(Protocol):
    """Something that delivers alerts; `send` never raises and says whether it got through."""

    def send(self, alert: Alert) -> bool: ...


class WebhookNotifier:
    """POSTs the alert payload as JSON to a URL, with a timeout and retries."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"webhook URL must be http:// or https:// with a host (got {url!r})")
        self.url = url
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._sleep = sleep

    def send(self, alert: Alert) -> bool:
        body = json.dumps(alert.payload(), sort_keys=True).encode("utf-8")
        for attempt in range(self._retries + 1):
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "fedaudit-schedule"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as response:
                    status = response.status
                log.info("webhook_delivered", run_id=alert.run_id, status=status, attempt=attempt)
                return True
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code != 429:
                    log.error("webhook_rejected", run_id=alert.run_id, error=error)
                    return False  # the receiver will not accept it however often we ask
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                error = str(getattr(exc, "reason", exc))
            log.warning("webhook_failed", run_id=alert.run_id, attempt=attempt, error=error)
            if attempt < self._retries:
                self._sleep(self._backoff * (attempt + 1))
        log.error("webhook_gave_up", run_id=alert.run_id, attempts=self._retries + 1)
        return False
