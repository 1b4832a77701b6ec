"""`fedaudit hub serve`, `node connect` and `audit run --hub` as an operator runs them.

Real processes: a hub, three nodes that dial out to it, and an audit that names the
nodes without addresses. The dial-out nodes are checked from the outside, through
the kernel's socket tables: they hold no listening TCP socket except the loopback
health and metrics ports they were asked for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedaudit.synthetic.federation import generate_federation
from tests.hub_support import HUB_NAME, REQUESTER, make_pki

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "deploy" / "policy.example.yaml"
DEFAULT_PLAN = ROOT / "fedaudit" / "plans" / "default.yaml"
FEDAUDIT = Path(sys.executable).with_name("fedaudit")

pytestmark = [
    pytest.mark.skipif(not FEDAUDIT.exists(), reason="the fedaudit script is not installed"),
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc"),
]

LISTEN = "0A"


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != LISTEN or inode not in inodes:
                continue
            address, port = local.split(":")
            found.add((_address(address, width), int(port, 16)))
    return found


def _address(hex_address: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_address)
    if width == 8:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 prints four little-endian 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    v6 = ipaddress.IPv6Address(words)
    return str(v6.ipv4_mapped or v6)  # gRPC listens on v6 sockets with v4-mapped addresses


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDAUDIT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(FEDAUDIT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module", name="world")
def _world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A hub and three dial-out nodes (M03 with loopback health and metrics ports)."""
    base = tmp_path_factory.mktemp("hub-cli")
    pki = make_pki(base / "pki")
    bundles = generate_federation(
        base / "bundles", municipalities=3, candidates_per_municipality=300
    )
    crl = str(pki.directory / "crl.pem")
    hub_port = _free_port()
    hub_files = pki.nodes[HUB_NAME]
    processes = []
    hub = _start(
        "hub", "serve", "--host", "127.0.0.1", "--port", str(hub_port), "--tls-cert",
        str(hub_files.cert), "--tls-key", str(hub_files.key), "--tls-ca", str(pki.ca.cert),
        "--tls-crl", crl,
    )  # fmt: skip
    processes.append(hub)
    nodes = {}
    extra = {}
    for bundle in bundles.bundles:
        db = base / f"{bundle.name}.db"
        imported = _run("node", "import", str(bundle), "--db", str(db))
        assert imported.returncode == 0, imported.stderr
        files = pki.nodes[bundle.name]
        ports: list[str] = []
        if bundle.name == "M03":
            extra = {"health": _free_port(), "metrics": _free_port()}
            ports = ["--health-port", str(extra["health"]), "--metrics-port", str(extra["metrics"])]
        node = _start(
            "node", "connect", "--hub", f"127.0.0.1:{hub_port}", "--hub-name", HUB_NAME,
            "--db", str(db), "--policy", str(POLICY), "--tls-cert", str(files.cert),
            "--tls-key", str(files.key), "--tls-ca", str(pki.ca.cert), "--tls-crl", crl, *ports,
        )  # fmt: skip
        processes.append(node)
        nodes[bundle.name] = node
    deadline = time.monotonic() + 60
    listed = ""
    while time.monotonic() < deadline:
        result = _run(
            "hub", "nodes", "--hub", f"127.0.0.1:{hub_port}", "--hub-name", HUB_NAME,
            "--tls-ca", str(pki.ca.cert),
        )  # fmt: skip
        listed = result.stdout
        if result.returncode == 0 and listed.split() == ["M01", "M02", "M03"]:
            break
        time.sleep(0.5)
    else:
        for p in processes:
            p.kill()
        pytest.fail(f"the nodes did not connect: {listed!r}")
    yield {"pki": pki, "hub_port": hub_port, "nodes": nodes, "extra": extra, "base": base}
    for p in reversed(processes):
        p.send_signal(signal.SIGINT)
    for p in processes:
        try:
            p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def test_a_dial_out_node_listens_on_no_tcp_port(world) -> None:
    """Without health or metrics ports a node connects out and listens nowhere."""
    for name in ("M01", "M02"):
        assert listening_sockets(world["nodes"][name].pid) == set(), name


def test_a_dial_out_node_listens_only_on_the_loopback_ports_it_was_asked_for(world) -> None:
    held = listening_sockets(world["nodes"]["M03"].pid)
    assert {port for _, port in held} == {world["extra"]["health"], world["extra"]["metrics"]}
    assert {address for address, _ in held} == {"127.0.0.1"}
    health = _run("node", "health", "--address", f"127.0.0.1:{world['extra']['health']}")
    assert health.returncode == 0, health.stdout + health.stderr
    connected = _run(
        "node", "health", "--address", f"127.0.0.1:{world['extra']['health']}", "--service", "hub"
    )
    assert connected.returncode == 0, connected.stdout + connected.stderr


def test_the_socket_check_sees_a_listening_node(tmp_path: Path) -> None:
    """Guards the guard: `node serve` on a port shows up as listening there."""
    port = _free_port()
    db = tmp_path / "node.db"
    assert (
        _run(
            "node", "import", str(ROOT / "tests/fixtures/bundle_small"), "--db", str(db)
        ).returncode
        == 0
    )
    node = _start(
        "node", "serve", "--db", str(db), "--policy", str(POLICY), "--insecure", "--port", str(port)
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not listening_sockets(node.pid):
            time.sleep(0.2)
        assert ("127.0.0.1", port) in listening_sockets(node.pid)
    finally:
        node.send_signal(signal.SIGINT)
        node.communicate(timeout=20)


def test_audit_run_through_the_hub_names_the_nodes(world, tmp_path: Path) -> None:
    plan = yaml.safe_load(DEFAULT_PLAN.read_text())
    del plan["checks"]["duplicates"], plan["checks"]["revocation"]
    plan["nodes"] = [{"name": name} for name in ("M01", "M02", "M03")]
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    auditor = world["pki"].auditors[REQUESTER]
    hub = [
        "--hub", f"127.0.0.1:{world['hub_port']}", "--hub-name", HUB_NAME, "--tls-cert",
        str(auditor.cert), "--tls-key", str(auditor.key), "--tls-ca", str(world["pki"].ca.cert),
    ]  # fmt: skip
    preview = _run("audit", "preview", str(plan_path), *hub)
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "3 of 3 nodes" in " ".join(preview.stdout.split())
    out = tmp_path / "report"
    result = _run(
        "audit", "run", str(plan_path), "--hub", f"127.0.0.1:{world['hub_port']}",
        "--hub-name", HUB_NAME, "--tls-cert", str(auditor.cert), "--tls-key", str(auditor.key),
        "--tls-ca", str(world["pki"].ca.cert), "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert {n["node"]: n["status"] for n in report["coverage"]["nodes"]} == {
        "M01": "answered",
        "M02": "answered",
        "M03": "answered",
    }
    assert report["audit"]["status"] == "complete"


def test_audit_run_without_hub_needs_addresses(world, tmp_path: Path) -> None:
    plan = yaml.safe_load(DEFAULT_PLAN.read_text())
    plan["nodes"] = [{"name": "M01"}, {"name": "M02"}, {"name": "M03"}]
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    result = _run("audit", "run", str(plan_path), "--insecure", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "have no address in the plan" in result.stderr
    assert "--hub" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hub", "nohost"], "--hub: expected HOST:PORT, got 'nohost'"),
        (["--hub", "h:1", "--health-host", "0.0.0.0", "--health-port", "8081"], "loopback only"),
        (["--hub", "h:1", "--metrics-host", "10.0.0.1", "--metrics-port", "9464"], "loopback only"),
        (["--hub", "h:1", "--max-clock-skew", "0"], "--max-clock-skew must be > 0"),
    ],
)
def test_node_connect_refuses_bad_input_in_one_line(tmp_path: Path, extra, message) -> None:
    pki = make_pki(tmp_path / "pki")
    files = pki.nodes["M01"]
    result = _run(
        "node", "connect", "--db", str(tmp_path / "none.db"), "--policy", str(POLICY),
        "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(pki.ca.cert),
        *extra,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_hub_serve_refuses_an_auditor_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    auditor = pki.auditors[REQUESTER]
    result = _run(
        "hub", "serve", "--port", str(_free_port()), "--tls-cert", str(auditor.cert),
        "--tls-key", str(auditor.key), "--tls-ca", str(pki.ca.cert),
    )  # fmt: skip
    assert result.returncode == 2
    assert "the hub needs a node certificate" in result.stderr, result.stderr
