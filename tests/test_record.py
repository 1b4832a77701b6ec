"""The coordinator's answer record: chained lines, crash and re-run, comparison with node logs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from fedaudit.cli.main import main
from fedaudit.coordinator.planning.default_plan import default_plan_path
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.coordinator.running.audit import run_audit
from fedaudit.coordinator.running.record import AnswerRecord, RecordError, read_record
from fedaudit.coordinator.running.transport import GrpcNodeTransport
from fedaudit.node.evidence.querylog import QueryLog, row_hash
from fedaudit.node.query.service import utcnow
from fedaudit.node.store.db import make_engine

REQUESTER = "oversight-board"
FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"


class _Crash(Exception):
    """The coordinator process dying in the middle of an audit."""


def _nodes(node_factory, tmp_path: Path) -> tuple[dict[str, str], dict[str, object]]:
    addresses, running = {}, {}
    for name in ("A", "B"):
        node = node_factory(f"sqlite:///{tmp_path / f'{name}.db'}")
        addresses[name], running[name] = f"127.0.0.1:{node.port}", node
    return addresses, running


def _run(addresses: dict[str, str], record, run_id: str) -> dict:
    plan = replace(load_plan(default_plan_path()), min_answering_nodes=1).with_nodes(addresses)
    transports = {n: GrpcNodeTransport(n, a, requester=REQUESTER) for n, a in addresses.items()}
    try:
        return run_audit(plan, transports, run_id=run_id, on_answer=record)
    finally:
        for t in transports.values():
            t.close()


def _rewrite_digest(db: Path, request_id: str) -> None:
    """An insider changes a logged digest and recomputes every hash after it, head included."""
    engine = make_engine(str(db))
    log = QueryLog(engine)
    rows = log.rows()
    prev = None
    with engine.begin() as conn:
        for row in rows:
            values = row.to_dict()
            if row.request_id == request_id and row.status == "answered":
                values["answer_digest"] = "f" * 64
            if prev is not None:
                values["prev_hash"] = prev
            values["row_hash"] = row_hash(values)
            conn.execute(
                text(
                    "UPDATE query_log SET answer_digest = :d, prev_hash = :p, row_hash = :h "
                    "WHERE seq = :s"
                ),
                {
                    "d": values["answer_digest"],
                    "p": values["prev_hash"],
                    "h": values["row_hash"],
                    "s": row.seq,
                },
            )
            prev = values["row_hash"]
        conn.execute(text("UPDATE query_log_head SET row_hash = :h"), {"h": prev})
    assert log.verify().ok  # the chain alone cannot see a full rewrite...
    engine.dispose()


def test_crashed_audit_reruns_without_double_charging(node_factory, tmp_path, capsys) -> None:
    """A coordinator dying mid-audit re-runs it: no node is charged twice, logs match the record."""
    addresses, running = _nodes(node_factory, tmp_path)
    record_path = tmp_path / "record.jsonl"
    with AnswerRecord(record_path, run_id="crash-1") as record:
        seen = []

        def crash_after_three(node, request_id, key, answer) -> None:
            record(node, request_id, key, answer)
            seen.append(request_id)
            if len(seen) == 3:
                raise _Crash

        with pytest.raises(_Crash):
            _run(addresses, crash_after_three, "crash-1")
    before = {
        n: node.service.ledger.status(REQUESTER, utcnow()).requester_rho_spent
        for n, node in running.items()
    }
    first = [e for e, _ in read_record(record_path)]
    assert len(first) >= 3

    with AnswerRecord(record_path, run_id="crash-1") as record:
        report = _run(addresses, record, "crash-1")
    assert report["audit"]["status"] == "complete"
    entries = [e for e, _ in read_record(record_path)]  # one chain across both runs
    charged = [e.request_id for e in entries if not e.replayed]
    assert len(charged) == len(set(charged))  # no request id was ever charged twice
    for name, node in running.items():
        spent = node.service.ledger.status(REQUESTER, utcnow()).requester_rho_spent
        recorded = sum(e.charged_rho_units for e in entries if e.node == name) / 10**12
        assert spent == pytest.approx(recorded, rel=1e-9)
        privacy = next(p for p in report["privacy"]["nodes"] if p["node"] == name)
        assert spent == pytest.approx(before[name] + privacy["rho"], rel=1e-9)
    replayed_first = {e.request_id for e in entries[len(first) :] if e.replayed}
    assert {e.request_id for e in first} <= replayed_first

    capsys.readouterr()
    for name in ("A", "B"):
        db = str(tmp_path / f"{name}.db")
        args = ["node", "log", "compare", "--db", db, "--record", str(record_path), "--node", name]
        assert main(args) == 0, capsys.readouterr().err
    a_ids = [e.request_id for e in entries if e.node == "A" and not e.replayed]
    _rewrite_digest(tmp_path / "A.db", a_ids[0])
    capsys.readouterr()
    args = ["node", "log", "compare", "--db", str(tmp_path / "A.db"), "--record", str(record_path)]
    assert main([*args, "--node", "A"]) == 1  # ...but the coordinator's record does
    assert f"{a_ids[0]}: answer digest differs" in capsys.readouterr().err


def test_record_chain_detects_an_edited_line(node_factory, tmp_path) -> None:
    """Changing, removing or reordering a line of the record is reported with its line number."""
    addresses, _ = _nodes(node_factory, tmp_path)
    record_path = tmp_path / "record.jsonl"
    with AnswerRecord(record_path, run_id="edit-1") as record:
        _run({"A": addresses["A"]}, record, "edit-1")
    lines = record_path.read_text().splitlines()
    assert len(read_record(record_path)) == len(lines) >= 3
    record_path.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(RecordError, match=":2: the record's hash chain is broken"):
        read_record(record_path)
    edited = lines[1].replace('"replayed": false', '"replayed": true')
    record_path.write_text("\n".join([lines[0], edited, *lines[2:]]) + "\n")
    with pytest.raises(RecordError, match=":2:"):
        read_record(record_path)
    assert (
        main(
            ["node", "log", "compare", "--db", str(tmp_path / "A.db"), "--record", str(record_path)]
        )
        == 2
    )
