"""A client that is not ours (Node.js @grpc/grpc-js with the published .proto) talks to a node.

Needs `node` and the packages of tests/foreign_client (`npm ci --prefix tests/foreign_client`).
Without them the test skips with the reason, unless FEDAUDIT_REQUIRE_TOOLS=1 (CI), where
it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLIENT_DIR = ROOT / "tests" / "foreign_client"
PROTO_ROOT = ROOT / "proto"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js (`node`) is not installed"
    if not (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return f"the foreign client's packages are not installed: npm ci --prefix {CLIENT_DIR}"
    return None


@pytest.fixture(name="foreign_client")
def _foreign_client() -> Path:
    """The Node.js client script, or a skip (a failure under FEDAUDIT_REQUIRE_TOOLS=1)."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("FEDAUDIT_REQUIRE_TOOLS") == "1":
            pytest.fail(f"required here (FEDAUDIT_REQUIRE_TOOLS=1): {reason}")
        pytest.skip(reason)
    return CLIENT_DIR / "client.js"


def test_grpc_js_client_gets_capabilities_and_a_well_formed_refusal(
    foreign_client, node_factory, sqlite_url
) -> None:
    """grpc-js reads capabilities (T01) and decodes INVALID_ARGUMENT with ErrorInfo INVALID_PARAMETERS."""
    node = node_factory(sqlite_url)
    done = subprocess.run(
        ["node", str(foreign_client), f"127.0.0.1:{node.port}", str(PROTO_ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    caps = out["capabilities"]
    assert caps["municipality_code"] == "T01"
    assert caps["protocol_version"] == "1"
    assert "assessment_results" in caps["templates"]
    assert caps["requester_rho_remaining"] == pytest.approx(2.0)

    refusal = out["refusal"]
    assert refusal["code"] == "INVALID_ARGUMENT"
    assert refusal["status_code"] == 3  # google.rpc.Code.INVALID_ARGUMENT
    assert "no_such_template" in refusal["message"]
    assert len(refusal["error_info"]) == 1
    info = refusal["error_info"][0]
    assert info["reason"] == "INVALID_PARAMETERS"
    assert info["domain"] == "fedaudit.org"
