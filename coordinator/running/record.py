"""The coordinator's own append-only record of what each node answered.

A JSON-lines file: one line per answer received, written through `run_audit`'s
`on_answer` hook, with the run, node, request id, template and data version, the
answer's digest (`fedaudit.common.digest.answer_digest`, the same definition as the
node's query log) and what it charged. A node's data officer can then compare
their log with it (`fedaudit node log compare`), and the oversight body holds
evidence of every release that does not depend on the node's database.

Each line carries the hash of the line before it, so the record is itself a hash
chain; re-running an audit after a crash appends to the same file and continues
the chain (replayed answers are recorded with `replayed: true` and no charge).

Each line also keeps the node's log head the answer carried (`log_seq`, `log_hash`):
the node's own log row for that release. Because the node's log is a hash chain,
that pair pins every row up to it; `fedaudit node log compare` checks them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from fedaudit.common.budget_units import rho_to_units
from fedaudit.common.digest import answer_digest
from fedaudit.coordinator.errors import NodeRefusedError
from fedaudit.node.domain import Answer

log = structlog.get_logger(__name__)

FORMAT = "fedaudit-record-v1"
GENESIS_HASH = "0" * 64


class RecordError(Exception):
    """The record file is unreadable or its chain is broken; the message names the line."""


@dataclass(frozen=True)
class RecordEntry:
    """One answer as the coordinator received it."""

    run_id: str
    node: str
    municipality_code: str
    request_id: str
    query_key: str
    template: str
    template_version: str
    data_version: str
    answer_digest: str
    replayed: bool
    charged_rho_units: int  # 0 for a replay: the node charged nothing for it
    rho: float  # the answer's stated charge (for a replay: what the original cost)
    epsilon: float | None
    received_at: str
    # The node's log head as the answer stated it (0 and "" from nodes that send none, and
    # in records written before anchors existed): the row that logged this release.
    log_seq: int = 0
    log_hash: str = ""
    log_signature: str = ""  # hex; the node's signature over its head (empty if unsigned)
    log_certificate: str = ""  # PEM of the certificate that verifies it
    outcome: str = "answer"  # or "refusal": the node refused; only the log head is kept
    reason: str = ""  # the refusal's reason (RefusalReason name)


def _line_hash(entry: dict[str, Any], prev: str) -> str:
    text = json.dumps([FORMAT, prev, entry], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AnswerRecord:
    """Appends answers to a record file; pass the instance as `run_audit(on_answer=...)`.

    Thread-safe (run_audit calls the hook from one thread per node). Every line is
    flushed and fsynced before the hook returns, so a crash loses no received answer.
    """

    def __init__(
        self, path: Path, *, run_id: str, clock: Callable[[], dt.datetime] = _utcnow
    ) -> None:
        self._path = Path(path)
        self._run_id = run_id
        self._clock = clock
        self._lock = threading.Lock()
        entries = read_record(self._path) if self._path.exists() else []
        self._prev = entries[-1][1] if entries else GENESIS_HASH
        self._file = self._path.open("a", encoding="utf-8")

    def __call__(self, node: str, request_id: str, query_key: str, answer: Answer) -> None:
        entry = RecordEntry(
            run_id=self._run_id,
            node=node,
            municipality_code=answer.municipality_code,
            request_id=request_id,
            query_key=query_key,
            template=answer.template,
            template_version=answer.template_version,
            data_version=answer.data_version,
            answer_digest=answer_digest(answer),
            replayed=answer.replayed,
            charged_rho_units=0 if answer.replayed else rho_to_units(answer.charge.rho),
            rho=answer.charge.rho,
            epsilon=answer.charge.epsilon,
            received_at=self._clock().astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            log_seq=answer.log_head.seq if answer.log_head else 0,
            log_hash=answer.log_head.row_hash if answer.log_head else "",
            log_signature=answer.log_head.signature.hex() if answer.log_head else "",
            log_certificate=answer.log_head.certificate.decode() if answer.log_head else "",
        )
        self._append(entry)
        log.info("record.appended", node=node, request_id=request_id, replayed=answer.replayed)

    def refused(
        self,
        node: str,
        municipality_code: str,
        request_id: str,
        query_key: str,
        refusal: NodeRefusedError,
    ) -> None:
        """Keep a refusal's log head: it anchors the node's log like an answer's does."""
        details = refusal.details
        entry = RecordEntry(
            run_id=self._run_id,
            node=node,
            municipality_code=municipality_code,
            request_id=request_id,
            query_key=query_key,
            template="",
            template_version="",
            data_version="",
            answer_digest="",
            replayed=False,
            charged_rho_units=0,
            rho=0.0,
            epsilon=None,
            received_at=self._clock().astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            log_seq=int(details.get("log_seq", "0") or 0),
            log_hash=details.get("log_hash", ""),
            log_signature=details.get("log_signature", ""),
            log_certificate="",
            outcome="refusal",
            reason=refusal.reason,
        )
        self._append(entry)
        log.info("record.refusal", node=node, request_id=request_id, reason=refusal.reason)

    def _append(self, entry: RecordEntry) -> None:
        data = asdict(entry)
        with self._lock:
            line_hash = _line_hash(data, self._prev)
            self._file.write(
                json.dumps({**data, "prev": self._prev, "hash": line_hash}, sort_keys=True) + "\n"
            )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._prev = line_hash

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> AnswerRecord:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_OPTIONAL_FIELDS = (
    "log_seq",
    "log_hash",
    "log_signature",
    "log_certificate",
    "outcome",
    "reason",
)
"""Added later: hashed when a line has them, so older records still verify."""
_ENTRY_FIELDS = tuple(f.name for f in fields(RecordEntry) if f.name not in _OPTIONAL_FIELDS)


def read_record(path: Path) -> list[tuple[RecordEntry, str]]:
    """Every entry of a record file with its line hash, after checking the whole chain.

    Raises `RecordError` naming the first line that is not valid JSON, lacks a field,
    or does not link to the line before it.
    """
    out: list[tuple[RecordEntry, str]] = []
    prev = GENESIS_HASH
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RecordError(f"{path}: cannot read the record: {exc.strerror or exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            data = {name: raw[name] for name in _ENTRY_FIELDS}
            data.update({name: raw[name] for name in _OPTIONAL_FIELDS if name in raw})
            stated_prev, stated_hash = raw["prev"], raw["hash"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"{path}:{number}: not a record line ({exc})") from exc
        if stated_prev != prev or _line_hash(data, prev) != stated_hash:
            raise RecordError(
                f"{path}:{number}: the record's hash chain is broken here "
                "(a line was changed, removed or reordered)"
            )
        out.append((RecordEntry(**data), stated_hash))
        prev = stated_hash
    return out
