"""What a new operator meets: the real `fedaudit` command, run as a subprocess (issue 15).

Each test starts the installed console script the way an operator would, with stdout and
stderr going to pipes (not a terminal), and checks the exit code, the exact line shown
and that nothing was written where nothing should be. One rule for every command: an
expected failure is one or two lines naming the thing and what to do, exit 2, never a
traceback; `--debug` adds the traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_BUNDLE = ROOT / "tests" / "fixtures" / "bundle_small"
POLICY = ROOT / "deploy" / "policy.example.yaml"
DEFAULT_PLAN = ROOT / "fedaudit" / "plans" / "default.yaml"
FEDAUDIT = Path(sys.executable).with_name("fedaudit")

pytestmark = pytest.mark.skipif(
    not FEDAUDIT.exists(), reason="the fedaudit script is not installed"
)


def run(*args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `fedaudit ARGS` to completion, output captured (a pipe, as under cron or CI)."""
    return subprocess.run(
        [str(FEDAUDIT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def start(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(FEDAUDIT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(stream, timeout: float = 60) -> str:
    """The next line of a running process's output, or fail after `timeout` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert box, f"no line within {timeout} s"
    return box[0]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.fixture(name="node_db")
def _node_db(tmp_path: Path) -> Path:
    """A SQLite node database with the fixture bundle imported (through the CLI)."""
    db = tmp_path / "node.db"
    result = run("node", "import", str(FIXTURE_BUNDLE), "--db", str(db))
    assert result.returncode == 0, result.stderr
    return db


def _broken_bundle(tmp_path: Path, name: str) -> Path:
    bundle = tmp_path / name
    shutil.copytree(FIXTURE_BUNDLE, bundle)
    candidates = bundle / "candidates.csv"
    lines = candidates.read_text(encoding="utf-8").splitlines()
    fields = lines[1].split(",")
    fields[0] = ""  # a candidate without an id
    lines[1] = ",".join(fields)
    candidates.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return bundle


# --- 1. the README's audit command -----------------------------------------------------------


def test_readme_audit_command_creates_the_record_directory(node_factory, tmp_path: Path) -> None:
    """`--record reports/answers.jsonl` before reports/ exists: the audit runs and records."""
    nodes = [node_factory(f"sqlite:///{tmp_path / f'n{i}.db'}") for i in range(3)]
    node_args = [
        a for i, n in enumerate(nodes) for a in ("--node", f"M0{i + 1}=127.0.0.1:{n.port}")
    ]
    result = run(
        "audit", "run", str(DEFAULT_PLAN), *node_args, "--insecure", "--quiet",
        "--out", "reports/2026-11", "--record", "reports/answers.jsonl", "--fail-on", "critical",
        "--allow-partial",
        cwd=tmp_path,
    )  # fmt: skip
    no_traceback(result)
    # These test nodes serve no blinding ring, so the default plan's duplicates check cannot
    # run and the audit is partial (exit 3 without --allow-partial, issue 15 item 11).
    assert result.returncode in (0, 1), result.stderr  # 1 only for a critical finding
    lines = (tmp_path / "reports" / "answers.jsonl").read_text().splitlines()
    assert lines
    assert all(json.loads(line)["run_id"] for line in lines)
    assert (tmp_path / "reports" / "2026-11" / "report.json").is_file()


# --- 2. ports ----------------------------------------------------------------------------------


def test_ports_are_exclusive_and_the_node_says_who_it_is(node_db: Path, tmp_path: Path) -> None:
    """A second node on a taken gRPC or health port is refused (exit 2); start-up and shutdown
    lines name the municipality and data version; the budget gauges are right from the start."""
    port, health, metrics = free_port(), free_port(), free_port()
    serve = [
        "--log-format", "console", "node", "serve", "--db", str(node_db), "--policy", str(POLICY), "--insecure",
        "--port", str(port), "--health-port", str(health), "--metrics-port", str(metrics),
    ]  # fmt: skip
    first = start(*serve)
    try:
        line = read_line(first.stderr)
        assert re.fullmatch(
            rf"node T01 \(Testhausen\), data version v1-[0-9a-f]{{12}}, serving on "
            rf"127\.0\.0\.1:{port} \(insecure, loopback only\); health on 127\.0\.0\.1:{health}; "
            rf"metrics on http://127\.0\.0\.1:{metrics}/metrics; Ctrl-C stops\n",
            line,
        ), line

        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
            text = r.read().decode()
        # Per requester: what it may still spend of its share of the node total (the example
        # policy: 10, 1 reserved, the board's share 8.0; unspent).
        assert 'fedaudit_node_rho_remaining{requester="oversight-board"} 8.0' in text
        assert 'fedaudit_node_requester_rho_remaining{requester="oversight-board"} 2.0' in text

        second = run("node", "serve", "--db", str(node_db), "--policy", str(POLICY),
                     "--insecure", "--port", str(port))  # fmt: skip
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"fedaudit: error: cannot listen on 127.0.0.1:{port} (--port): the port is already "
            "in use (is another node or service running there?)",
            "stop the process that holds it, or choose another --port",
        ]
        third = run("node", "serve", "--db", str(node_db), "--policy", str(POLICY), "--insecure",
                    "--port", str(free_port()), "--health-port", str(health))  # fmt: skip
        assert third.returncode == 2
        assert third.stderr.splitlines()[0] == (
            f"fedaudit: error: cannot listen on 127.0.0.1:{health} (--health-port): the port is "
            "already in use (is another node or service running there?)"
        )
        assert first.poll() is None  # the first node still serves
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    assert first.returncode == 0
    assert err.splitlines() == [
        "stopping: finishing calls in flight (up to 5 s)",
        "node T01 (Testhausen) stopped",
    ]


def test_json_logs_keep_grpc_core_lines_out(node_db: Path, tmp_path: Path) -> None:
    """Under --log-format json every stderr line of `node serve` is a JSON object, even when a
    client's TLS handshake fails (gRPC's C core would print `E1207 ... ssl_transport_security`)."""
    import grpc

    from fedaudit.pki.authority import create_throwaway_pki
    from fedaudit.pki.tls import TlsFiles, channel_credentials
    from fedaudit.wire.v1 import node_pb2, node_pb2_grpc

    pki = create_throwaway_pki(tmp_path / "pki", ["T01"], "oversight-board")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    node = start(
        "--log-format", "json", "--log-level", "info", "node", "serve", "--db", str(node_db),
        "--policy", str(POLICY), "--port", str(port), "--tls-cert", str(pki.nodes["T01"].cert),
        "--tls-key", str(pki.nodes["T01"].key), "--tls-ca", str(pki.ca.cert),
        env=env,
    )  # fmt: skip
    try:
        before = [json.loads(read_line(node.stderr))]  # log events, expiry warnings (2-day CA)
        while before[-1]["event"] != "node_started":
            before.append(json.loads(read_line(node.stderr)))
        started = before[-1]
        assert started["municipality"] == "T01"
        assert started["data_version"].startswith("v1-")
        auditor = pki.auditors["oversight-board"]
        creds = channel_credentials(TlsFiles(auditor.cert, auditor.key, pki.ca.cert))
        # The wrong pinned name: the handshake fails at both ends.
        options = [("grpc.ssl_target_name_override", "M99")]
        with (
            grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel,
            pytest.raises(grpc.RpcError),
        ):
            node_pb2_grpc.AuditNodeStub(channel).GetCapabilities(
                node_pb2.CapabilitiesRequest(), timeout=5
            )
    finally:
        node.send_signal(signal.SIGINT)
        _, err = node.communicate(timeout=30)
    assert node.returncode == 0
    for line in err.splitlines():
        assert isinstance(json.loads(line), dict), line
    assert json.loads(err.splitlines()[-1])["event"] == "node_stopped"


# --- 3 and 4. databases that do not exist ----------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["node", "budget", "--policy", str(POLICY)],
        ["node", "budget-history", "--policy", str(POLICY)],
        ["node", "serve", "--policy", str(POLICY), "--insecure", "--port", "0"],
        ["node", "log", "show"],
        ["node", "log", "verify"],
    ],
    ids=lambda c: " ".join(c[:3]),
)
def test_a_missing_sqlite_database_is_named_and_not_created(command, tmp_path: Path) -> None:
    """Every command refuses a mistyped SQLite path in two lines, exit 2, and creates nothing."""
    db = tmp_path / "typo.db"
    result = run(*command, "--db", str(db))
    no_traceback(result)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"fedaudit: error: {db}: no such node database",
        f"import a data bundle first: fedaudit node import BUNDLE_DIR --db {db}",
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_a_missing_postgresql_database_is_one_message(pg_available, tmp_path: Path) -> None:
    """A PostgreSQL database that does not exist: the server's reason and a hint, exit 2."""
    if pg_available is not None:
        pytest.skip(pg_available)
    url = os.environ.get("FEDAUDIT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    missing = url.rsplit("/", 1)[0] + "/fedaudit_no_such_db"
    for command in (
        ["node", "budget", "--policy", str(POLICY)],
        ["node", "import", str(FIXTURE_BUNDLE)],
        ["node", "log", "show"],
    ):
        result = run(*command, "--db", missing)
        no_traceback(result)
        assert result.returncode == 2
        first, second = result.stderr.splitlines()
        assert first.startswith("fedaudit: error: cannot use the database: connection failed:")
        assert 'database "fedaudit_no_such_db" does not exist' in first
        assert second.startswith("check --db:")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """`--debug` prints the traceback of the same failure, and still exits 2."""
    result = run("--debug", "node", "import", str(FIXTURE_BUNDLE), "--db", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-2:] == [
        "fedaudit: error: cannot use the database: unable to open database file",
        "check --db: is the database server running, does the database exist, may the role log in?",
    ]
    quiet = run("node", "import", str(FIXTURE_BUNDLE), "--db", str(tmp_path))
    assert quiet.stderr.splitlines() == result.stderr.splitlines()[-2:]


def test_a_rejected_import_into_a_new_path_leaves_no_file(tmp_path: Path) -> None:
    bundle = _broken_bundle(tmp_path, "export")
    db = tmp_path / "new" / "node.db"
    db.parent.mkdir()
    result = run("node", "import", str(bundle), "--db", str(db))
    assert result.returncode == 2
    assert re.match(
        rf"{re.escape(str(bundle))}: \d+ problem\(s\); nothing was imported\n", result.stderr
    )
    assert list(db.parent.iterdir()) == []


def test_a_rejected_import_into_an_existing_database_keeps_it(node_db: Path, tmp_path) -> None:
    before = node_db.stat().st_size
    result = run("node", "import", str(_broken_bundle(tmp_path, "export")), "--db", str(node_db))
    assert result.returncode == 2
    assert node_db.stat().st_size == before


# --- 6. Ctrl-C during an audit ---------------------------------------------------------------


@pytest.fixture(name="silent_nodes")
def _silent_nodes() -> Iterator[list[int]]:
    """Three ports that accept connections and never answer: unresponsive nodes."""
    servers, held = [], []
    for _ in range(3):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        servers.append(server)

    accepted = threading.Event()

    def accept(server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            accepted.set()

    for server in servers:
        threading.Thread(target=accept, args=(server,), daemon=True).start()
    yield [s.getsockname()[1] for s in servers], accepted  # type: ignore[misc]
    for sock in [*servers, *held]:
        sock.close()


def test_ctrl_c_during_an_audit_stops_promptly_and_says_how_to_finish(
    silent_nodes, tmp_path: Path
) -> None:
    ports, accepted = silent_nodes
    node_args = [a for i, p in enumerate(ports) for a in ("--node", f"M0{i + 1}=127.0.0.1:{p}")]
    audit = start(
        "audit", "run", str(DEFAULT_PLAN), *node_args, "--insecure", "--run-id", "monthly-7",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert accepted.wait(60), "the audit never connected"
    time.sleep(0.5)  # the calls are now waiting for nodes that never answer
    sent = time.monotonic()
    audit.send_signal(signal.SIGINT)
    _, err = audit.communicate(timeout=60)
    seconds = time.monotonic() - sent
    assert audit.returncode == 130
    assert seconds < 5, f"exited {seconds:.1f} s after Ctrl-C"
    assert err.splitlines()[-2:] == [
        "audit interrupted: no answer arrived; no report was written.",
        "Re-run with --run-id monthly-7: what the nodes already charged for this run is "
        "replayed at no cost.",
    ]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --- 7. numbers and output that is not a terminal --------------------------------------------


def test_budget_amounts_read_the_same_everywhere(node_db: Path) -> None:
    """13 charges of 0.03 (each rounded up to 0.030000000001 in the ledger) show as 0.39."""
    from fedaudit.node.domain import Charge, Mechanism
    from fedaudit.node.privacy.ledger import Ledger
    from fedaudit.node.privacy.policy import load_policy
    from fedaudit.node.store.db import make_engine

    engine = make_engine(str(node_db))
    ledger = Ledger(engine, load_policy(POLICY))
    now = dt.datetime.now(dt.UTC)
    for i in range(13):
        entry = ledger.reserve(
            request_id=f"r{i}", requester="oversight-board", template="assessment_results",
            template_version="1", query_hash=f"{i}".ljust(64, "0"), data_version="v1",
            mechanism=Mechanism.DISCRETE_GAUSSIAN, charge=Charge(rho=0.030000000000000002), now=now,
        )  # fmt: skip
        ledger.complete(entry, "{}")
    engine.dispose()
    budget = run("node", "budget", "--db", str(node_db), "--policy", str(POLICY))
    history = run("node", "budget-history", "--db", str(node_db), "--policy", str(POLICY))
    assert budget.returncode == history.returncode == 0
    for out in (budget.stdout, history.stdout):
        assert re.search(r"oversight-board\s+│\s+(2\s+│\s+)?0\.39\s+│\s+(2\s+│\s+)?1\.61\b", out), (
            out
        )
        assert "0.3900000" not in out
        assert "1.6099999" not in out
    exact = run("node", "budget-history", "--db", str(node_db), "--policy", str(POLICY), "--json")
    rows = json.loads(exact.stdout)["rows"]
    assert rows[0]["spent_rho"] == "0.390000000013"  # --json keeps the ledger's exact value


def test_output_to_a_pipe_is_never_wrapped_or_cut(node_db: Path, tmp_path: Path) -> None:
    """`validate` prints each problem on one line; `log show` never truncates a cell."""
    from fedaudit.node.errors import BundleError
    from fedaudit.node.ingest.bundle import validate_bundle
    from fedaudit.node.privacy.policy import load_policy
    from fedaudit.node.query.service import NodeService
    from fedaudit.node.store.db import make_engine

    bundle = _broken_bundle(tmp_path, "export")
    with pytest.raises(BundleError) as problems:
        validate_bundle(bundle)
    result = run("node", "validate", str(bundle))
    assert result.returncode == 2
    assert result.stderr.splitlines()[1:] == list(problems.value.problems)
    assert any(len(line) > 80 for line in problems.value.problems)

    engine = make_engine(str(node_db))
    NodeService(engine, load_policy(POLICY)).capabilities("regional-statistics")
    engine.dispose()
    shown = run("node", "log", "show", "--db", str(node_db))
    assert shown.returncode == 0
    assert "regional-statistics" in shown.stdout
    assert "…" not in shown.stdout


# --- 8. help ---------------------------------------------------------------------------------


def test_every_option_has_help_and_names_its_default() -> None:
    """Each option and argument of every command says what it is; a default is stated."""
    import argparse

    from fedaudit.cli.main import build_parser

    def walk(parser: argparse.ArgumentParser, words: list[str]):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*words, name])
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                yield " ".join(words), action

    missing = []
    for command, action in walk(build_parser(), ["fedaudit"]):
        name = "/".join(action.option_strings) or action.metavar or action.dest
        trivial = action.default in (None, False, []) or action.required
        if not action.help or (not trivial and "default" not in action.help):
            missing.append(f"{command} {name}")
    assert missing == []


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["node", "serve"], "gRPC port; refused when another process holds it (default: 50051)"),
        (["node", "budget"], "the node policy YAML (its caps are shown)"),
        (["audit", "run"], "(default: ./audit-report)"),
        (["pki", "init"], "(default: 3650)"),
        (["node", "health"], "(default: 127.0.0.1:8081)"),
        ([], "print the traceback of an error"),
    ],
)
def test_help_shows_text_and_defaults(words: list[str], expected: str) -> None:
    result = run(*words, "--help")
    assert result.returncode == 0
    assert expected in " ".join(result.stdout.split())


def test_issue_node_takes_the_name_after_host(tmp_path: Path) -> None:
    """`--host` takes one value, so the name may follow it."""
    d = str(tmp_path / "pki")
    assert run("pki", "init", "--dir", d).returncode == 0
    result = run("pki", "issue-node", "--dir", d, "--host", "node-m03.example", "M03")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"certificate: {d}/nodes/M03.pem"


def test_dev_sh_help_and_unknown_command(tmp_path: Path) -> None:
    env = {**os.environ, "FEDAUDIT_VENV": str(tmp_path / "never-made")}
    helped = subprocess.run(
        [str(ROOT / "dev.sh"), "help"], capture_output=True, text=True, env=env, check=False
    )
    assert helped.returncode == 0
    assert "set -euo" not in helped.stdout
    assert helped.stdout.splitlines()[0].startswith("Set up (once) and run fedaudit")
    unknown = subprocess.run(
        [str(ROOT / "dev.sh"), "foo"], capture_output=True, text=True, env=env, check=False
    )
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[0] == "dev.sh: unknown command 'foo'"
    assert not (tmp_path / "never-made").exists()


# --- 10. set-up ------------------------------------------------------------------------------


def test_demo_reports_every_bad_bundle_and_writes_nothing(tmp_path: Path) -> None:
    first, second = _broken_bundle(tmp_path, "a"), _broken_bundle(tmp_path, "b")
    out = tmp_path / "demo-out"
    result = run("demo", "--bundles", str(first), str(second), "--out", str(out))
    no_traceback(result)
    assert result.returncode == 2
    assert re.search(rf"^{re.escape(str(first))}: \d+ problem\(s\)$", result.stderr, re.M)
    assert re.search(rf"^{re.escape(str(second))}: \d+ problem\(s\)$", result.stderr, re.M)
    assert result.stderr.splitlines()[-1] == (
        "fedaudit: error: 2 of 2 bundle(s) have problems (listed above); nothing was imported"
    )
    assert not out.exists()


def test_demo_output_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("fedaudit-demo/report.json", "audit-report/report.html"):
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], check=False)
        assert ignored.returncode == 0, path


# --- 9. the documented commands are the real ones --------------------------------------------


def _documented_commands(path: Path) -> list[str]:
    """Every `fedaudit ...` command in the shell blocks of a document, continuations joined."""
    commands, block = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            block = [] if block is None and line.strip() in ("```sh", "```bash") else None
            continue
        if block is None:
            continue
        block.append(line)
        if line.endswith("\\"):
            continue
        text = " ".join(part.rstrip("\\").strip() for part in block).split(" #")[0]
        block.clear()
        found = re.match(r"\s*(?:(?:[\d*/,-]+\s+){5})?(fedaudit\s.*)", text)  # or in a crontab
        if found and not text.lstrip().startswith("#"):
            commands.append(re.split(r"\s(?:\|\|?|&&|;|>>?|2>)\s", found.group(1))[0])
    return commands


@pytest.mark.parametrize(
    "document", ["README.md", "docs/operations.md", "docs/security.md", "docs/hub.md"]
)
def test_documented_commands_parse(document: str) -> None:
    """Each command the runbooks tell an operator to type is accepted by the real parser."""
    import contextlib
    import io
    import shlex

    from fedaudit.cli.main import build_parser

    commands = _documented_commands(ROOT / document)
    assert commands
    refused = []
    for command in commands:
        words = shlex.split(command, comments=True)[1:]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(words)
        except SystemExit as exc:
            if exc.code == 0:  # --version, --help
                continue
            refused.append(f"{command}\n    {err.getvalue().strip().splitlines()[-1]}")
    assert refused == [], "\n".join(refused)


def test_health_check_of_an_unreachable_node_says_what_to_check() -> None:
    """Exit 1 (the probe's 'unhealthy'), with the reason in words, not just a status code."""
    port = free_port()
    result = run("node", "health", "--address", f"127.0.0.1:{port}", "--timeout", "5")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"127.0.0.1:{port}: UNAVAILABLE (nothing answers there; is the node running with "
        "--health-port on that address?)"
    ]
