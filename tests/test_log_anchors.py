"""Anchored log heads: an operator who rewrites the log, chain and head included, is caught.

Regression for attack 5 of issue 10: an operator removed rows of the query log and
rewrote the chain and head; `verify` said intact and `compare` caught only the one
answer the coordinator had recorded. Now every answer and refusal carries the node's
log head (the seq and chain hash of the row that logged it), the coordinator's record
keeps it, and `node log compare` reports the first anchored row that no longer matches.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from fedaudit.cli.errors import EXIT_FINDINGS, EXIT_OK
from fedaudit.cli.main import main
from fedaudit.coordinator.errors import NodeRefusedError
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.coordinator.running.record import GENESIS_HASH as RECORD_GENESIS
from fedaudit.coordinator.running.record import (
    AnswerRecord,
    _line_hash,
    read_record,
)
from fedaudit.node.domain import QuerySpec
from fedaudit.node.evidence.logcompare import compare_with_record
from fedaudit.node.evidence.querylog import GENESIS_HASH, HEAD_ID, QueryLog, row_hash
from fedaudit.node.store.models import QueryLogEntry, QueryLogHead

BOARD = "oversight-board"  # conftest's MTLS_AUDITORS[0]


def _audit(connect, record_path: Path) -> list[tuple[str, int, str]]:
    """Answers, a refusal and a replay over mTLS, recorded; returns (kind, seq, hash) seen."""
    board = connect(BOARD)
    seen = []
    with AnswerRecord(record_path, run_id="anchors") as record:
        for i, template in enumerate(("assessment_results", "certificates_issued")):
            answer, _ = board.query(QuerySpec(template, rho=0.05), f"q{i}", timeout=10)
            record("M01", f"q{i}", template, answer)
            seen.append(("answer", answer.log_head.seq, answer.log_head.row_hash))
        with pytest.raises(NodeRefusedError) as refused:
            board.query(QuerySpec("no_such_template", rho=0.05), "bad", timeout=10)
        record.refused("M01", "T01", "bad", "no_such_template", refused.value)
        seen.append(
            ("refusal", int(refused.value.details["log_seq"]), refused.value.details["log_hash"])
        )
        answer, _ = board.query(QuerySpec("appeal_outcomes", rho=0.05), "q2", timeout=10)
        record("M01", "q2", "appeal_outcomes", answer)
        seen.append(("answer", answer.log_head.seq, answer.log_head.row_hash))
        replay, _ = board.query(QuerySpec("appeal_outcomes", rho=0.05), "q2", timeout=10)
        assert replay.replayed
        record("M01", "q2", "appeal_outcomes", replay)
        seen.append(("replay", replay.log_head.seq, replay.log_head.row_hash))
    return seen


def _rewrite(engine, *, drop: set[int] = frozenset(), edit: dict[int, str] | None = None) -> None:
    """What a malicious operator does: change rows, then recompute every link and the head."""
    edit = edit or {}
    with engine.begin() as conn:
        rows = [
            dict(r._mapping) for r in conn.execute(select(QueryLogEntry.__table__).order_by("seq"))
        ]
        conn.execute(delete(QueryLogEntry))
        prev, seq = GENESIS_HASH, 0
        for row in rows:
            if row["seq"] in drop:
                continue
            if row["seq"] in edit:
                row["message"] = edit[row["seq"]]
            seq += 1
            row.update(seq=seq, prev_hash=prev)
            row["row_hash"] = row_hash(row)
            prev = row["row_hash"]
            conn.execute(QueryLogEntry.__table__.insert().values(**row))
        conn.execute(
            update(QueryLogHead).where(QueryLogHead.id == HEAD_ID).values(seq=seq, row_hash=prev)
        )


def test_every_answer_and_refusal_carries_the_row_that_logged_it(
    connect, mtls_node, tmp_path
) -> None:
    seen = _audit(connect, tmp_path / "record.jsonl")
    log = mtls_node.service.query_log
    for kind, seq, digest in seen:
        row = log.row_at(seq)
        assert row is not None, kind
        assert row.row_hash == digest
        assert row.method == "query"
        assert (
            row.status == {"answer": "answered", "refusal": "refused", "replay": "replayed"}[kind]
        )
    seqs = [seq for _, seq, _ in seen]
    assert seqs == sorted(seqs)
    recorded = [e for e, _ in read_record(tmp_path / "record.jsonl")]
    assert [(e.log_seq, e.log_hash) for e in recorded] == [(seq, digest) for _, seq, digest in seen]
    assert [e.outcome for e in recorded].count("refusal") == 1
    assert compare_with_record(log, recorded) == []


@pytest.mark.parametrize(
    "tamper",
    ["remove the refusal", "remove an answer and a capabilities row", "edit the refusal's message"],
)
def test_a_rewritten_log_is_caught_at_the_first_anchor(
    connect, mtls_node, tmp_path, tamper
) -> None:
    record = tmp_path / "record.jsonl"
    seen = _audit(connect, record)
    engine = mtls_node.service.engine
    refusal_seq = next(seq for kind, seq, _ in seen if kind == "refusal")
    first_answer = next(seq for kind, seq, _ in seen if kind == "answer")
    if tamper == "remove the refusal":
        _rewrite(engine, drop={refusal_seq})
        first_broken = refusal_seq  # the refusal's own head is in the record
    elif tamper == "remove an answer and a capabilities row":
        _rewrite(engine, drop={1, first_answer})  # row 1: the transport's capabilities call
        first_broken = first_answer
    else:
        _rewrite(engine, edit={refusal_seq: "nothing to see here"})
        first_broken = refusal_seq

    log = QueryLog(engine)
    assert log.verify().ok  # the chain alone cannot tell
    entries = [e for e, _ in read_record(record)]
    mismatches = compare_with_record(log, entries)
    assert mismatches, tamper
    assert f"at or before row {first_broken}" in mismatches[0].problem or (
        f"no row {first_broken}" in mismatches[0].problem
    )


def test_node_log_compare_reports_the_rewrite(connect, mtls_node, tmp_path, capsys) -> None:
    record = tmp_path / "record.jsonl"
    seen = _audit(connect, record)
    db = str(Path(mtls_node.service.engine.url.database))
    assert main(["node", "log", "compare", "--db", db, "--record", str(record)]) == EXIT_OK
    capsys.readouterr()
    refusal_seq = next(seq for kind, seq, _ in seen if kind == "refusal")
    _rewrite(mtls_node.service.engine, drop={refusal_seq})
    assert main(["node", "log", "verify", "--db", db]) == EXIT_OK  # looks intact on its own
    capsys.readouterr()
    assert main(["node", "log", "compare", "--db", db, "--record", str(record)]) == EXIT_FINDINGS
    err = capsys.readouterr().err
    assert "the log was rewritten at or before row" in err


def test_heads_are_signed_by_the_node_and_a_forged_head_does_not_verify(
    connect, mtls_node, mtls_pki, tmp_path, capsys
) -> None:
    """The node signs each head with its federation key; `compare --tls-ca` checks every one."""
    record = tmp_path / "record.jsonl"
    _audit(connect, record)
    entries = [e for e, _ in read_record(record)]
    assert all(e.log_signature for e in entries)
    answers = [e for e in entries if e.outcome == "answer"]
    assert all("BEGIN CERTIFICATE" in e.log_certificate for e in answers)
    db = str(Path(mtls_node.service.engine.url.database))
    ca = str(mtls_pki.ca.cert)
    compare = ["node", "log", "compare", "--db", db, "--record", str(record), "--tls-ca", ca]
    assert main(compare) == EXIT_OK
    capsys.readouterr()

    # A coordinator that invents a head (to accuse the node of a rewrite) cannot sign it.
    lines = record.read_text(encoding="utf-8").splitlines()
    forged = tmp_path / "forged.jsonl"
    prev = RECORD_GENESIS
    rewritten = []
    for i, line in enumerate(lines):
        data = json.loads(line)
        data.pop("prev"), data.pop("hash")
        if i == 0:
            data["log_hash"] = "0" * 64
        line_hash = _line_hash(data, prev)
        rewritten.append(json.dumps({**data, "prev": prev, "hash": line_hash}, sort_keys=True))
        prev = line_hash
    forged.write_text("\n".join(rewritten) + "\n", encoding="utf-8")
    compare[compare.index(str(record))] = str(forged)
    assert main(compare) == EXIT_FINDINGS
    assert "signature does not verify" in capsys.readouterr().err


class _OneQueryGoesWrong:
    """A transport whose appeals query reaches the node misspelt, so the node refuses it."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.name, self.address = inner.name, inner.address

    def __getattr__(self, attr: str):
        return getattr(self._inner, attr)

    def query(self, spec, request_id, *, timeout):
        if spec.template == "appeal_outcomes":
            spec = replace(spec, template="appeal_outcome")
        return self._inner.query(spec, request_id, timeout=timeout)


def test_run_audit_records_refusals_with_their_log_heads(connect, mtls_node, tmp_path) -> None:
    """`audit run --record` keeps the head of every refused query as well as every answer's."""
    plan = replace(load_plan(default_plan_path()), min_answering_nodes=1)
    plan = plan.with_nodes({"M01": f"127.0.0.1:{mtls_node.port}"})
    record_path = tmp_path / "record.jsonl"
    with AnswerRecord(record_path, run_id="r1") as record:
        report = run_audit(
            plan,
            {"M01": _OneQueryGoesWrong(connect(BOARD))},
            run_id="r1",
            on_answer=record,
            on_refusal=record.refused,
        )
    statuses = [q["status"] for q in report["coverage"]["nodes"][0]["queries"]]
    assert "refused" in statuses
    entries = [e for e, _ in read_record(record_path)]
    refusals = [e for e in entries if e.outcome == "refusal"]
    assert len(refusals) == statuses.count("refused")
    assert all(e.reason == "INVALID_PARAMETERS" and e.log_seq > 0 for e in refusals)
    log = mtls_node.service.query_log
    assert compare_with_record(log, entries) == []
    _rewrite(mtls_node.service.engine, edit={refusals[0].log_seq: "rewritten"})
    mismatches = compare_with_record(QueryLog(mtls_node.service.engine), entries)
    assert f"at or before row {refusals[0].log_seq}" in mismatches[0].problem
