"""Compare a node's query log with the coordinator's record of what that node answered.

Each side keeps its own evidence: the node its hash-chained log, the coordinator a
record of every answer it received (`fedaudit.coordinator.running.record`). For every
recorded answer from this node, the log must hold a query row with the same request
id, template, data version and answer digest, the same outcome (answered or
replayed) and the same charge. A difference means one side's evidence was altered,
or the node released something it did not log.

Each recorded answer also carries the node's log head at that release (seq and
chain hash of its row). The log must still have exactly that hash at that seq:
otherwise a row at or before it was removed or edited and the chain rewritten,
which the chain alone (`verify`) cannot see.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from fedaudit.common.digest import log_head_statement
from fedaudit.node.evidence.querylog import ANSWERED, REPLAYED, LogRow, QueryLog
from fedaudit.pki.identity import IdentityError, verify_node_statement


class RecordEntry(Protocol):
    """What the comparison reads of a recorded answer.

    A protocol rather than the coordinator's own class, so the node never imports
    coordinator code: `fedaudit.coordinator.running.record.RecordEntry` fits it.
    """

    @property
    def request_id(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def replayed(self) -> bool: ...
    @property
    def answer_digest(self) -> str: ...
    @property
    def charged_rho_units(self) -> int: ...
    @property
    def template(self) -> str: ...
    @property
    def template_version(self) -> str: ...
    @property
    def data_version(self) -> str: ...
    @property
    def log_seq(self) -> int: ...
    @property
    def log_hash(self) -> str: ...
    @property
    def log_signature(self) -> str: ...
    @property
    def log_certificate(self) -> str: ...
    @property
    def outcome(self) -> str: ...


@dataclass(frozen=True)
class Mismatch:
    """One recorded answer the node's log does not confirm, and how it differs."""

    request_id: str
    node: str
    problem: str


def signature_problem(entry: RecordEntry, ca: x509.Certificate) -> str:
    """Why a recorded head does not prove the node stated it ("" when its signature holds).

    The signature is checked against the federation CA and the node named in the record,
    so a head the coordinator made up (to accuse the node) does not verify either.
    """
    if not entry.log_signature:
        return "the node's log head for this answer is not signed"
    if not entry.log_certificate:
        return ""  # a refusal's head carries no certificate: checked through the chain only
    try:
        verify_node_statement(
            ca,
            entry.log_certificate.encode(),
            log_head_statement(entry.node, entry.log_seq, entry.log_hash),
            bytes.fromhex(entry.log_signature),
            claimed_name=entry.node,
        )
    except (IdentityError, ValueError) as exc:
        return f"the log head's signature does not verify: {exc}"
    return ""


def check_anchors(
    log: QueryLog, entries: Iterable[RecordEntry], ca: x509.Certificate | None = None
) -> Mismatch | None:
    """The first recorded log head (lowest seq) that the node's log no longer has, or None.

    A head is the seq and chain hash of the row that logged a release. Each row's hash
    covers the row before it, so if the row at `seq` still has the recorded hash (and the
    chain verifies, which `compare` also checks), no row at or before it was changed,
    removed or inserted since: a rewrite of the chain and head cannot hide that.
    """
    anchored = sorted((e for e in entries if e.log_seq > 0), key=lambda e: e.log_seq)
    for entry in anchored:
        row = log.row_at(entry.log_seq)
        unproven = signature_problem(entry, ca) if ca is not None else ""
        if unproven:
            problem = unproven
        elif row is None:
            problem = f"the log has no row {entry.log_seq}, which the node named as this answer's"
        elif row.row_hash != entry.log_hash:
            problem = (
                f"row {entry.log_seq} no longer has the hash the node sent with this answer "
                f"({entry.log_hash[:16]}..., now {row.row_hash[:16]}...): the log was rewritten "
                f"at or before row {entry.log_seq}"
            )
        else:
            continue
        return Mismatch(entry.request_id, entry.node, problem)
    return None


def compare_with_record(
    log: QueryLog, entries: Iterable[RecordEntry], ca: x509.Certificate | None = None
) -> list[Mismatch]:
    """Every recorded answer the log does not confirm (an empty list: they agree).

    The first anchor that no longer holds (`check_anchors`; with `ca`, also one whose
    signature does not verify) comes first.
    """
    entries = list(entries)
    anchor = check_anchors(log, entries, ca)
    mismatches = [] if anchor is None else [anchor]
    for entry in entries:
        if entry.outcome != "answer":
            continue  # a refusal released nothing; its log head was checked above
        rows = [
            r
            for r in log.rows(request_id=entry.request_id)
            if r.method == "query" and r.status in (ANSWERED, REPLAYED)
        ]
        problem = _problem(entry, rows)
        if problem:
            mismatches.append(Mismatch(entry.request_id, entry.node, problem))
    return mismatches


def _problem(entry: RecordEntry, rows: list[LogRow]) -> str:
    if not rows:
        return "the node's log has no released answer for this request id"
    status = REPLAYED if entry.replayed else ANSWERED
    candidates = [r for r in rows if r.status == status]
    if not candidates:
        received = "a replay" if entry.replayed else "a fresh answer"
        logged = ", ".join(sorted({r.status for r in rows}))
        return f"the coordinator received {received}, the node logged only: {logged}"
    row = next((r for r in candidates if r.answer_digest == entry.answer_digest), None)
    if row is None:
        logged = ", ".join(sorted({r.answer_digest[:16] for r in candidates}))
        return (
            f"answer digest differs: the coordinator received {entry.answer_digest[:16]}..., "
            f"the node logged {logged}..."
        )
    if row.rho_units != entry.charged_rho_units:
        return (
            f"charge differs: the node logged {row.rho_units} units of 1e-12 rho, "
            f"the record says {entry.charged_rho_units}"
        )
    if (row.template, row.template_version, row.data_version) != (
        entry.template,
        entry.template_version,
        entry.data_version,
    ):
        return (
            f"query differs: the node logged {row.template} {row.template_version} on "
            f"{row.data_version}, the record says {entry.template} {entry.template_version} "
            f"on {entry.data_version}"
        )
    return ""
