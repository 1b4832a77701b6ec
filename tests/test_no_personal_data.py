"""No personal field of the registry reaches a log line or a message that leaves the node."""

from __future__ import annotations

import csv
from pathlib import Path

import grpc
from structlog.testing import capture_logs

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.logs import REDACTED, redact_personal_fields
from fedaudit.node.query import catalogue
from fedaudit.wire.v1 import node_pb2 as pb
from fedaudit.wire.v1 import node_pb2_grpc as pb_grpc

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"
METADATA = ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, "oversight-board"))


def _personal_values() -> set[str]:
    """Every class-P value of the fixture bundle (names, DOBs, ids, certificate numbers)."""
    values: set[str] = set()
    with (FIXTURE_BUNDLE / "candidates.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            values.update(
                v
                for k, v in row.items()
                if k in ("national_id", "given_name", "family_name", "date_of_birth") and v
            )
            values.add(row["candidate_id"])
    with (FIXTURE_BUNDLE / "certificates.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            values.update(
                v for k, v in row.items() if k in ("certificate_no", "origin_certificate_no") and v
            )
    return values


def test_no_personal_value_in_logs_or_wire(node_factory, sqlite_url) -> None:
    """Names, DOBs, national ids, candidate ids and certificate numbers appear nowhere outside."""
    personal = _personal_values()
    assert len(personal) > 20  # the fixture really has personal data to leak
    wire: list[bytes] = []
    with capture_logs() as logs:
        node = node_factory(sqlite_url)
        with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
            stub = pb_grpc.AuditNodeStub(channel)
            wire.append(
                stub.GetCapabilities(
                    pb.CapabilitiesRequest(), metadata=METADATA, timeout=5
                ).SerializeToString()
            )
            for name, template in catalogue.TEMPLATES.items():
                dims = [
                    d for d in ("provider", "isco_code", "subject_type") if d in template.dimensions
                ][:1]
                req = pb.QueryRequest(
                    request_id=f"pii-{name}",
                    template=name,
                    group_by=dims,
                    mechanism=pb.DISCRETE_GAUSSIAN,
                    rho=0.01,
                    confidence=0.95,
                )
                wire.append(stub.Preflight(req, metadata=METADATA, timeout=5).SerializeToString())
                wire.append(stub.Query(req, metadata=METADATA, timeout=5).SerializeToString())
            try:  # a refusal's message and details leave the node too
                stub.Query(
                    pb.QueryRequest(
                        request_id="x", template="nope", mechanism=pb.DISCRETE_GAUSSIAN, rho=0.1
                    ),
                    metadata=METADATA,
                    timeout=5,
                )
            except grpc.RpcError as exc:
                wire.append(str(exc.details()).encode())
                wire.append(repr(exc.trailing_metadata()).encode())
    log_text = "\n".join(repr(e) for e in logs)
    assert logs, "expected the node to log its work"
    blob = b"\n".join(wire)
    for value in personal:
        assert value not in log_text, f"personal value {value!r} in a log line"
        assert value.encode() not in blob, f"personal value {value!r} in a message leaving the node"


def test_redaction_processor_drops_personal_keys() -> None:
    """A log call that names a personal field gets the value redacted before rendering."""
    event = redact_personal_fields(
        None, "info", {"event": "x", "given_name": "Anna", "template": "t"}
    )
    assert event == {"event": "x", "given_name": REDACTED, "template": "t"}
