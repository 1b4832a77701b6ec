"""The blinding ring's protocol values, shared by the node and the coordinator.

Both sides of a ring run speak in these terms: the run's parameters, a node's join
answer, the roster (ring order with every node's signed per-run box key), the parts
of a batch on the wire, and the names of the match keys a plan may ask for. They
live here, not in the node, so the coordinator can relay and verify batches
without importing node internals; how a node derives key values from a registry
stays in `fedaudit.node.ring.keys`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from fedaudit.common import ring_crypto as rc

PREFIX3_SORTED_DOB = "prefix3_sorted_dob"
SOUNDEX_SORTED_DOB = "soundex_sorted_dob"
NATIONAL_ID = "national_id"
NAME_DOB = "name_dob"
PREFIX3_DOB = "prefix3_dob"
SOUNDEX_DOB = "soundex_dob"
SWAPPED_DOB = "swapped_dob"

NAME_KEYS: tuple[str, ...] = (PREFIX3_SORTED_DOB, SOUNDEX_SORTED_DOB)
"""The default keys: two order-independent keys. On FEBRL4 they match a superset of the
four older name keys' pairs (69.1 % recall against 67.7 %, no false pair), and with
m = 2 tokens per row instead of 4 every sensitivity is smaller (docs/dedup.md)."""
LEGACY_NAME_KEYS: tuple[str, ...] = (NAME_DOB, PREFIX3_DOB, SOUNDEX_DOB, SWAPPED_DOB)
"""The four name keys of the first ring version; a plan may still name them."""
ALL_KEYS: tuple[str, ...] = (*NAME_KEYS, NATIONAL_ID, *LEGACY_NAME_KEYS)
"""Every key a plan may ask for. Coarse keys (given+DOB, surname+DOB, names+year) are
deliberately absent: at a million persons they produce thousands of false duplicates
(research/private-dedup.md §2.4)."""

SHOPPING_WINDOW_MONTHS = 12
"""A pass this many months or fewer after a fail elsewhere counts as assessment shopping."""


@dataclass(frozen=True)
class RingParams:
    """What a run asks of every node; the same for all nodes of a run."""

    keys: tuple[str, ...]
    bound: int
    shopping: bool
    revoked: bool
    rho: float
    epsilon: float | None = None

    def digest(self) -> bytes:
        """What every member signs with its membership proof (`ring_crypto.membership_statement`).

        A roster only holds together when every member joined with the same parameters:
        the tally node adds the releases' noise for the run's rho, so a coordinator that
        told one node a larger rho than another could otherwise have the releases noised
        for a charge the other nodes never made.
        """
        text = json.dumps(
            [list(self.keys), self.bound, self.shopping, self.revoked, self.rho, self.epsilon]
        )
        return hashlib.sha256(b"fedaudit-dedup-params/v1\x00" + text.encode()).digest()


@dataclass(frozen=True)
class JoinInfo:
    """A node's answer to Join: its per-run keys and the proof that it is a federation node.

    Nothing in it depends on the node's data (no row count): Join reveals no count.
    """

    municipality_code: str
    signing_key: bytes
    box_key: bytes
    box_key_signature: bytes
    certificate: bytes = b""
    """The node's federation certificate (PEM)."""
    membership_signature: bytes = b""
    """ECDSA signature by the certificate's key over `ring_crypto.membership_statement`."""

    def roster_entry(self) -> RosterEntry:
        return RosterEntry(
            municipality_code=self.municipality_code,
            signing_key=self.signing_key,
            box_key=self.box_key,
            box_key_signature=self.box_key_signature,
            certificate=self.certificate,
            membership_signature=self.membership_signature,
        )


@dataclass(frozen=True)
class RosterEntry:
    municipality_code: str
    signing_key: bytes
    box_key: bytes
    box_key_signature: bytes
    certificate: bytes = b""
    membership_signature: bytes = b""


@dataclass(frozen=True)
class BatchHeader:
    run_id: str
    origin: str
    hop: int
    rows: int
    sender: str


@dataclass(frozen=True)
class BatchTrailer:
    digest: bytes
    signature: bytes


BatchPart = BatchHeader | bytes | BatchTrailer
"""A batch on the wire: one header, chunks (sealed or, on the last hop, plain), one trailer."""


def roster_digest(run_id: str, roster: Sequence[RosterEntry]) -> bytes:
    """SHA-256 over the run and every roster entry in ring order."""
    h = hashlib.sha256(b"fedaudit-dedup-roster/v2\x00" + run_id.encode())
    for e in roster:
        for part in (
            e.municipality_code.encode(),
            e.signing_key,
            e.box_key,
            e.box_key_signature,
            e.certificate,
            e.membership_signature,
        ):
            h.update(len(part).to_bytes(4, "big") + part)
    return h.digest()


def tally_position(digest: bytes, members: int) -> int:
    """The roster position of the run's tally node, fixed by the roster digest.

    The tally node receives every fully blinded batch, counts and releases only noisy
    counts; nobody else, the coordinator included, ever sees the final tokens. Taken
    from the digest so that every member computes the same one; the coordinator, which
    orders the roster, can steer it (docs/dedup.md, "What each party learns").
    """
    return int.from_bytes(hashlib.sha256(b"fedaudit-dedup-tally/v1\x00" + digest).digest()[:8]) % (
        members
    )


@dataclass
class LabelledRow:
    """A fully blinded row with the municipality whose batch it came in (at the tally node)."""

    origin: str
    row: rc.Row


@dataclass(frozen=True)
class TallyRelease:
    """One noisy count vector as the tally node released it."""

    name: str
    values: tuple[int, ...]
    scale: float


@dataclass(frozen=True)
class TallyResult:
    """The tally node's answer: noisy counts only, signed with its per-run key.

    `occupations` orders the per-occupation cells; they are the occupations of every
    member's qualification catalogue (each node pads every one, so they are in the rows
    whatever the registries hold).
    """

    municipality_code: str
    occupations: tuple[str, ...]
    releases: tuple[TallyRelease, ...]
    signature: bytes = b""

    def statement(self, run_id: str, roster_digest: bytes) -> bytes:
        body = json.dumps(
            [
                self.municipality_code,
                list(self.occupations),
                [[r.name, list(r.values), repr(r.scale)] for r in self.releases],
            ]
        )
        return b"\x00".join(
            [b"fedaudit-dedup-tally/v1", run_id.encode(), roster_digest, body.encode()]
        )
