"""Why a node could not be reached, in words an operator can act on.

gRPC reports connection and TLS failures as C-core text ("failed to connect to all
addresses; last error: UNKNOWN: ipv4:127.0.0.1:50061: Custom verification check failed
with error: UNAUTHENTICATED: Hostname Verification Check failed."). That text is
accurate but not something an oversight body can act on. `plain_failure` turns the
common cases into one sentence naming the node, its address and what to check; anything
it does not recognise keeps the raw text, prefixed with the address, so nothing is
hidden.

The pinned-identity case can say more than gRPC does: with `peer_names` (a probe that
reads the certificate the address presents, see `fedaudit.pki.tls.peer_certificate_names`)
the sentence says whose certificate answered ("the node at localhost:50061 is not M05:
its certificate names M02").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

PeerNames = Callable[[str], Sequence[str]]
"""Reads the DNS names of the certificate served at an address (empty when it cannot)."""

_PEER_NAME = re.compile(r"Peer name (\S+) is not in peer certificate")


def plain_failure(
    node: str,
    address: str,
    code: str,
    details: str,
    *,
    peer_names: PeerNames | None = None,
) -> str:
    """One plain sentence for a failed call to `node` at `address` (gRPC `code`, `details`)."""
    text = details or ""
    lower = text.lower()
    at = f"the node at {address}" if address else f"node {node}"
    if code == "DEADLINE_EXCEEDED":
        return f"{at} did not answer in time (deadline exceeded); is it overloaded or hanging?"
    match = _PEER_NAME.search(text)
    if match is not None or "hostname verification" in lower:
        # The coordinator pins the plan's node name (grpc.ssl_target_name_override).
        expected = match.group(1) if match is not None else node
        host = address.rpartition(":")[0].strip("[]")
        names = _probe(peer_names, address)
        # A node certificate's first DNS name is its node name; the rest are host names.
        others = [n for n in names if n not in (expected, host, "localhost")]
        if others:
            return (
                f"{at} is not {expected}: its certificate names {others[0]}; check the "
                "address in the plan or --node"
            )
        return (
            f"{at} is not {expected}: its certificate does not name {expected}; check the "
            "address in the plan or --node"
        )
    if "connection refused" in lower:
        return (
            f"nothing is listening at {address} (connection refused); is node {node} running, "
            "and is the address right?"
        )
    if "dns resolution failed" in lower or "name or service not known" in lower:
        host = address.rpartition(":")[0] or address
        return f"the host name {host!r} of node {node} cannot be resolved (DNS); check the address"
    if "certificate verify failed" in lower or "certificate_verify_failed" in lower:
        return (
            f"{at} presented a certificate the federation CA does not vouch for (another CA, "
            f"expired or not yet valid); node {node} needs a current certificate from "
            "`fedaudit pki issue-node`"
        )
    if "wrong version number" in lower or ("ssl_error_ssl" in lower and "record" in lower):
        return (
            f"{at} does not speak TLS (is it serving with --insecure?); start it with its "
            "--tls-* files or audit it with --insecure on loopback"
        )
    if "socket closed" in lower or "handshake" in lower or "ssl" in lower or "tls" in lower:
        return (
            f"{at} ended the TLS handshake: it does not accept this auditor certificate "
            "(another federation CA, expired, or not an auditor certificate), or it is not "
            f"a fedaudit node; raw error: {_short(text)}"
        )
    if "connect" in lower or "unavailable" in lower or code == "UNAVAILABLE":
        return f"{at} could not be reached: {_short(text)}"
    return f"{at} failed ({code or 'error'}): {_short(text)}"


def _probe(peer_names: PeerNames | None, address: str) -> list[str]:
    if peer_names is None or not address:
        return []
    try:
        return list(peer_names(address))
    except Exception:  # a diagnosis must never turn into a second failure
        return []


def _short(text: str, limit: int = 200) -> str:
    """The gRPC text without the C-core preamble, at most `limit` characters."""
    text = text.replace("failed to connect to all addresses; last error: ", "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["PeerNames", "plain_failure"]
