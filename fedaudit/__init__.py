"""fedaudit: federated, differentially private audits of vocational certificates.

The importable package gathers the repository's top-level parts: `fedaudit.node`
(a municipality's node), `fedaudit.coordinator` (the oversight body's audits),
`fedaudit.audit_reports` (report.json and report.html) and `fedaudit.wire` (the
generated gRPC code).
"""

__version__ = "0.1.0"

PROTOCOL_VERSION = "1"
"""Major version of the wire protocol; sent as metadata on every call."""

PROTOCOL_METADATA_KEY = "fedaudit-protocol"
REQUESTER_METADATA_KEY = "fedaudit-requester"
