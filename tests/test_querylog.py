"""The node's tamper-evident query log: chain, tampering, races, gRPC hooks, restart, CLI."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine, text

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.cli.main import main
from fedaudit.common.budget_units import rho_to_units
from fedaudit.common.digest import answer_digest
from fedaudit.common.serde import answer_from_pb
from fedaudit.node.evidence.querylog import LogEvent, LogRow, QueryLog
from fedaudit.node.query import catalogue
from fedaudit.node.query.service import utcnow
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

REQUESTER = "oversight-board"
METADATA = ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, REQUESTER))
FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
THREADS = 16


@pytest.fixture(name="engine")
def _engine(db_url: str) -> Iterator[Engine]:
    """A node database with its schema and a pool big enough for every racing thread."""
    engine = make_engine(db_url, pool_size=THREADS + 4, max_overflow=0)
    create_schema(engine)
    yield engine
    engine.dispose()


def _event(i: int) -> LogEvent:
    return LogEvent(
        requester="board",
        method="query",
        request_id=f"r-{i}",
        template="assessment_results",
        template_version="1",
        data_version="v1-abc",
        parameters='{"template":"assessment_results"}',
        rho_units=50_000_000_000,
        epsilon=0.1 if i % 2 else None,
        answer_digest=f"{i:064x}",
    )


def _filled(engine: Engine, n: int = 5) -> QueryLog:
    log = QueryLog(engine)
    for i in range(1, n + 1):
        log.append(_event(i))
    return log


def _sql(engine: Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def test_appends_form_a_chain_that_verifies(engine: Engine) -> None:
    """Rows get seq 1..n, each links to the one before, and the head names the last."""
    log = _filled(engine)
    rows = log.rows()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(rows))
    assert rows[0].epsilon_charged == "0.1"
    assert rows[1].epsilon_charged == ""
    result = log.verify()
    assert result.ok
    assert result.rows == 5
    assert (result.head_seq, result.head_hash) == (5, rows[-1].row_hash)


def test_editing_any_field_is_detected(engine: Engine) -> None:
    """Changing any stored field of a row breaks the chain exactly at that row."""
    log = _filled(engine)
    original = log.rows()[2]
    edits = {
        name: (value + 1 if isinstance(value, int) else _changed(value))
        for name, value in original.to_dict().items()
        if name != "seq"
    }
    for column, value in edits.items():
        _sql(engine, f"UPDATE query_log SET {column} = :v WHERE seq = 3", v=value)
        result = log.verify()
        assert not result.ok, column
        assert result.broken_seq == 3, (column, result.problem)
        _sql(
            engine, f"UPDATE query_log SET {column} = :v WHERE seq = 3", v=getattr(original, column)
        )
        assert log.verify().ok


def _changed(value: str) -> str:
    """The same length (so it fits the column), one character different."""
    return value[:-1] + ("y" if value.endswith("x") else "x")


def test_deleting_a_row_is_detected(engine: Engine) -> None:
    """A row deleted from the middle or from the end is named."""
    log = _filled(engine)
    _sql(engine, "DELETE FROM query_log WHERE seq = 3")
    result = log.verify()
    assert not result.ok
    assert result.broken_seq == 4
    assert "row 3 is missing" in result.problem

    _sql(engine, "DELETE FROM query_log")  # start again, then cut the last row off
    _sql(engine, "DELETE FROM query_log_head")
    log = _filled(engine)
    assert log.verify().ok
    _sql(engine, "DELETE FROM query_log WHERE seq = 5")
    result = log.verify()
    assert not result.ok
    assert result.broken_seq == 5
    assert "deleted from the end" in result.problem


def test_reordering_rows_is_detected(engine: Engine) -> None:
    """Swapping the seq of two rows breaks the chain at the first of them."""
    log = _filled(engine)
    _sql(engine, "UPDATE query_log SET seq = -1 WHERE seq = 2")
    _sql(engine, "UPDATE query_log SET seq = 2 WHERE seq = 3")
    _sql(engine, "UPDATE query_log SET seq = 3 WHERE seq = -1")
    result = log.verify()
    assert not result.ok
    assert result.broken_seq == 2


def test_concurrent_appends_keep_one_chain(engine: Engine) -> None:
    """16 threads appending at once leave one gap-free chain with every row in it."""
    log = QueryLog(engine)
    barrier = threading.Barrier(THREADS)

    def work(t: int) -> list[int]:
        barrier.wait()
        return [log.append(_event(t * 100 + i)).seq for i in range(6)]

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        seqs = [s for batch in pool.map(work, range(THREADS)) for s in batch]
    assert sorted(seqs) == list(range(1, THREADS * 6 + 1))
    result = log.verify()
    assert result.ok
    assert result.rows == THREADS * 6
    assert {r.request_id for r in log.rows()} == {
        f"r-{t * 100 + i}" for t in range(THREADS) for i in range(6)
    }


# --- hooks over real gRPC ---------------------------------------------------------------------


def _stub(node) -> tuple[grpc.Channel, pb_grpc.AuditNodeStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{node.port}")
    return channel, pb_grpc.AuditNodeStub(channel)


def _request(request_id: str, template: str = "assessment_results", rho: float = 0.05):
    return pb.QueryRequest(
        request_id=request_id,
        template=template,
        mechanism=pb.DISCRETE_GAUSSIAN,
        rho=rho,
        confidence=0.95,
    )


def _refused(call, *args, metadata=METADATA) -> None:
    with pytest.raises(grpc.RpcError):
        call(*args, metadata=metadata, timeout=10)


def test_every_outcome_is_logged_with_its_reason(node_factory, db_url) -> None:
    """Answers, replays, preflights and refusals (in the service and at the boundary) are logged."""
    node = node_factory(db_url)
    channel, stub = _stub(node)
    with channel:
        stub.GetCapabilities(pb.CapabilitiesRequest(), metadata=METADATA, timeout=10)
        stub.Preflight(_request("p-1"), metadata=METADATA, timeout=10)
        first = stub.Query(_request("q-1"), metadata=METADATA, timeout=10)
        again = stub.Query(_request("q-1"), metadata=METADATA, timeout=10)
        _refused(stub.Query, _request("q-2"), metadata=((PROTOCOL_METADATA_KEY, "0"),))
        _refused(stub.Query, _request("q-3"), metadata=((PROTOCOL_METADATA_KEY, "1"),))
        _refused(stub.Query, _request("q-4", rho=5.0))
        _refused(stub.Query, _request("q-5", template="no_such_template"))
    rows = node.service.query_log.rows()
    got = [(r.method, r.status, r.reason) for r in rows]
    assert got == [
        ("capabilities", "answered", ""),
        ("preflight", "answered", ""),
        ("query", "answered", ""),
        ("query", "replayed", ""),
        ("query", "refused", "VERSION_MISMATCH"),
        ("query", "refused", "REQUESTER_NOT_ALLOWED"),
        ("query", "refused", "BUDGET_EXHAUSTED"),
        ("query", "refused", "INVALID_PARAMETERS"),
    ]
    answered, replayed = rows[2], rows[3]
    assert answered.answer_digest == answer_digest(answer_from_pb(first))
    assert replayed.answer_digest == answer_digest(answer_from_pb(again))
    assert answered.rho_units == rho_to_units(first.charge.rho)
    assert replayed.rho_units == 0
    assert answered.template_version == catalogue.TEMPLATES["assessment_results"].version
    assert answered.data_version == first.data_version
    assert answered.request_id == "q-1"
    assert '"rho":0.05' in answered.parameters
    assert rows[6].rho_units == 0
    assert "rho" in rows[6].message
    assert rows[5].requester == ""  # no requester header: refused in the service, still logged
    assert node.service.query_log.verify().ok


def _personal_values() -> set[str]:
    values: set[str] = set()
    with (FIXTURE_BUNDLE / "candidates.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            values.update(
                v
                for k, v in row.items()
                if k
                in ("candidate_id", "national_id", "given_name", "family_name", "date_of_birth")
                and v
            )
    with (FIXTURE_BUNDLE / "certificates.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            values.update(
                v for k, v in row.items() if k in ("certificate_no", "origin_certificate_no") and v
            )
    return values


def test_no_personal_data_in_the_log(node_factory, sqlite_url) -> None:
    """After every template was queried, no name, DOB, id or certificate number is in the log."""
    personal = _personal_values()
    assert len(personal) > 20
    node = node_factory(sqlite_url)
    channel, stub = _stub(node)
    with channel:
        for name in catalogue.TEMPLATES:
            stub.Query(_request(f"pii-{name}", template=name), metadata=METADATA, timeout=10)
    rows = node.service.query_log.rows()
    assert len(rows) == len(catalogue.TEMPLATES)
    dump = "\n".join(str(r.to_dict()) for r in rows)
    assert not [v for v in personal if v in dump]


def test_restart_keeps_ledger_and_log_and_replays_stay_free(node_factory, db_url) -> None:
    """A new node server on the same database finds ledger and log intact; replays cost nothing."""
    first = node_factory(db_url)
    channel, stub = _stub(first)
    with channel:
        answer = stub.Query(_request("restart-1"), metadata=METADATA, timeout=10)
    spent = first.service.ledger.status(REQUESTER, utcnow()).requester_rho_spent
    head = first.service.query_log.head()
    first.stop(grace=None)

    second = node_factory(db_url, bundle=None)
    assert second.service.query_log.head() == head
    assert second.service.query_log.verify().ok
    channel, stub = _stub(second)
    with channel:
        replay = stub.Query(_request("restart-1"), metadata=METADATA, timeout=10)
        stub.Query(_request("restart-2", template="appeal_outcomes"), metadata=METADATA, timeout=10)
    assert replay.replayed
    assert list(replay.cells) == list(answer.cells)
    status = second.service.ledger.status(REQUESTER, utcnow())
    assert status.requester_rho_spent == pytest.approx(spent + 0.05, rel=1e-9)
    rows: list[LogRow] = second.service.query_log.rows()
    assert [(r.request_id, r.status) for r in rows[-3:]] == [
        ("restart-1", "answered"),
        ("restart-1", "replayed"),
        ("restart-2", "answered"),
    ]
    assert second.service.query_log.verify().ok


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_show_verify_and_usage(node_factory, tmp_path, capsys) -> None:
    """verify exits 0 intact, 1 naming the tampered row, 2 on a missing database; show lists."""
    db = tmp_path / "node.db"
    node = node_factory(f"sqlite:///{db}")
    channel, stub = _stub(node)
    with channel:
        for i in range(3):
            stub.Query(_request(f"cli-{i}", rho=0.01 * (i + 1)), metadata=METADATA, timeout=10)
    capsys.readouterr()
    assert main(["node", "log", "verify", "--db", str(db)]) == 0
    assert "intact: 3 rows" in capsys.readouterr().out
    assert main(["node", "log", "show", "--db", str(db), "--json", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.count('"request_id": "cli-') for line in lines] == [1, 1]
    assert "cli-2" in lines[-1]
    assert main(["node", "log", "show", "--db", str(db), "--requester", "nobody", "--json"]) == 0
    assert capsys.readouterr().out.strip() == ""
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    assert main(["node", "log", "show", "--db", str(db), "--since", future, "--json"]) == 0
    assert capsys.readouterr().out.strip() == ""

    engine = make_engine(str(db))
    _sql(engine, "UPDATE query_log SET rho_units = 0 WHERE seq = 2")
    engine.dispose()
    assert main(["node", "log", "verify", "--db", str(db)]) == 1
    assert "BROKEN at row 2" in capsys.readouterr().err
    assert main(["node", "log", "verify", "--db", str(tmp_path / "missing.db")]) == 2
    assert not (tmp_path / "missing.db").exists()
