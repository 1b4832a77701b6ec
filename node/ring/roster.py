"""The roster check: a node blinds nothing until the ring is a set of distinct federation nodes.

The coordinator assembles the roster and is untrusted (docs/dedup.md, "Membership").
Before reading its registry a node checks, for the roster it was handed:

- every entry proves with its federation node certificate that it is the node it
  names (`fedaudit.pki.identity`: chain to the CA this node trusts, valid now, node
  role, certificate name = municipality code, ECDSA signature over the run, the
  entry's per-run keys and the run's parameters as this node joined it: members that
  were handed different parameters cannot form a ring), and its box key is signed by
  its per-run signing key;
- no municipality, certificate key, signing key or box key appears twice (a
  coordinator cannot list one node twice, or this node twice under two names);
- this node appears exactly once, with the keys it drew for this run;
- at least the policy's `ring.min_municipalities` members, and, when the policy
  names `ring.allowed_peers`, every other member is one of them;
- when the node enforces the federation CA's CRL (`node serve --tls-crl`), no
  member's certificate is revoked, and a CRL that cannot be trusted refuses every
  roster (fail closed, as the CRL guard does for callers).

Any failure is a `RosterRefusedError` (ROSTER_REFUSED) naming the member and check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedaudit.common import ring_crypto as rc
from fedaudit.common.ring_protocol import RosterEntry
from fedaudit.node.errors import RosterRefusedError
from fedaudit.node.privacy.policy import RingPolicy
from fedaudit.pki.enrolment import RevocationList
from fedaudit.pki.identity import IdentityError, NodeIdentity


def check_roster(
    run_id: str,
    roster: Sequence[RosterEntry],
    identity: NodeIdentity,
    policy: RingPolicy,
    *,
    own_signing_key: bytes,
    own_box_key: bytes,
    params_digest: bytes,
    now: dt.datetime,
    revocations: Callable[[], RevocationList | None] | None = None,
) -> int:
    """Refuse a roster this node must not blind for; return this node's position in it."""
    codes = [e.municipality_code for e in roster]
    minimum = max(2, policy.min_municipalities)
    if len(set(codes)) < minimum:
        raise RosterRefusedError(
            f"the roster names {len(set(codes))} distinct municipalities; this node's policy "
            f"needs at least {minimum}",
            {"check": "min_municipalities", "minimum": str(minimum)},
        )
    for what, values in (
        ("municipality", codes),
        ("signing key", [e.signing_key for e in roster]),
        ("box key", [e.box_key for e in roster]),
    ):
        if len(set(values)) != len(values):
            raise RosterRefusedError(
                f"two roster entries share a {what}", {"check": "distinct", "field": what}
            )
    mine = [i for i, e in enumerate(roster) if e.signing_key == own_signing_key]
    if len(mine) != 1:
        raise RosterRefusedError("this node is not in the roster", {"check": "self"})
    me = mine[0]
    if roster[me].municipality_code != identity.name or roster[me].box_key != own_box_key:
        raise RosterRefusedError(
            "the roster does not carry this node's name and keys for the run", {"check": "self"}
        )
    crl = revocations() if revocations is not None else None
    if revocations is not None and crl is None:
        raise RosterRefusedError(
            "this node's CRL cannot be trusted now (unreadable or past its next update); "
            "no roster is accepted until the CA publishes a new one",
            {"check": "crl"},
        )
    public_keys: set[bytes] = set()
    for e in roster:
        code = e.municipality_code
        if (
            e is not roster[me]
            and policy.allowed_peers is not None
            and code not in policy.allowed_peers
        ):
            raise RosterRefusedError(
                f"{code} is not among this node's allowed ring peers (policy ring.allowed_peers)",
                {"check": "allowed_peers", "member": code},
            )
        try:
            identity.verify_peer(
                e.certificate,
                rc.membership_statement(run_id, code, e.signing_key, e.box_key, params_digest),
                e.membership_signature,
                claimed_name=code,
                now=now,
            )
            rc.verify(
                e.signing_key,
                rc.box_key_statement(run_id, code, e.box_key),
                e.box_key_signature,
            )
        except IdentityError as exc:
            raise RosterRefusedError(
                f"roster member {code} is not a proven node of this federation for this run "
                f"and its parameters: {exc}",
                {"check": "membership", "member": code},
            ) from exc
        except rc.RingCryptoError as exc:
            raise RosterRefusedError(
                f"the box key of {code} is not signed by its run key",
                {"check": "box_key", "member": code},
            ) from exc
        certificate = x509.load_pem_x509_certificate(e.certificate)
        if crl is not None and crl.is_revoked(certificate):
            raise RosterRefusedError(
                f"the certificate of roster member {code} is revoked (federation CRL)",
                {"check": "crl", "member": code},
            )
        key = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if key in public_keys:
            raise RosterRefusedError(
                f"{code} uses a certificate key another roster member uses",
                {"check": "distinct", "field": "certificate key"},
            )
        public_keys.add(key)
    return me
