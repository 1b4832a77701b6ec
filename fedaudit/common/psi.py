"""Two-party labelled PSI for revocation reconciliation: an OPRF over ristretto255.

The recognising node R holds references (origin municipality O, origin certificate
number); the origin node O holds its revoked certificate numbers with the day each was
revoked. R must learn which of its references O revoked, and when; O must learn nothing
about R's references but how many (padded) it was asked about; the relay learns nothing.

The construction is the 2HashDH oblivious PRF (Jarecki et al.), as in OPAQUE and
Apple's/Google's PSI deployments, with labels:

* O draws a per-run key k. For each revoked number x it publishes an entry
  (tag(F(x)), Enc_{key(F(x))}(revoked day)) where F(x) = H(x)^k, padded with random
  entries to a public bucket size and sorted by tag (so order says nothing).
* R blinds each reference y with a per-run scalar r: B = H(y)^r (padded with random
  points). O returns B^k. R unblinds with r^-1 and gets F(y) = H(y)^k, so it can
  compute tag(F(y)) and open the matching entry, and nothing else: without k the
  other entries are random strings to it (DDH in ristretto255).
* O sees only H(y)^r, uniformly random whatever y is, so it cannot tell which of its
  certificates were asked about, nor whether any matched.

H binds every point to the run and to O's code, so answers from one run or origin are
useless in another. Sizes are padded to the next power of two (at least 64), so each
side learns only that bucket of the other's count.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import rbcl
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from fedaudit.common.ring_crypto import POINT_BYTES, blind_parallel, random_element

PSI_VERSION = "psi-v1"
TAG_BYTES = 16
DAY_BYTES = 10  # ISO date, YYYY-MM-DD
ENTRY_BYTES = TAG_BYTES + SecretBox.NONCE_SIZE + SecretBox.MACBYTES + DAY_BYTES
MIN_BUCKET = 64


class PsiError(Exception):
    """A PSI message is malformed (wrong length, not a group element, padding mismatch)."""


def normalise_certificate_no(value: str) -> str:
    """Upper-case ASCII letters and digits only ("ab-123 45" -> "AB12345").

    Certificate numbers are typed by hand at two municipalities; case, spaces and
    dashes differ while the number is the same (data contract: issuer numbers).
    """
    folded = unicodedata.normalize("NFKD", value).upper()
    return "".join(ch for ch in folded if ch.isascii() and ch.isalnum())


def bucket(count: int) -> int:
    """The padded size for `count` items: the next power of two, at least MIN_BUCKET."""
    size = MIN_BUCKET
    while size < count:
        size *= 2
    return size


def reference_point(run_id: str, origin: str, certificate_no: str) -> bytes:
    """H(y): the group element of one origin certificate number, bound to run and origin."""
    number = normalise_certificate_no(certificate_no)
    data = f"{PSI_VERSION}|{run_id}|{origin}|{number}".encode()
    return bytes(rbcl.crypto_core_ristretto255_from_hash(hashlib.sha512(data).digest()))


def new_scalar() -> bytes:
    """A fresh per-run secret scalar (the OPRF key k, or R's blinding factor r)."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_random())


def _check_points(data: bytes, what: str) -> None:
    if len(data) % POINT_BYTES:
        raise PsiError(f"{what}: {len(data)} bytes is not a whole number of group elements")
    for i in range(0, len(data), POINT_BYTES):
        if not rbcl.crypto_core_ristretto255_is_valid_point(data[i : i + POINT_BYTES]):
            raise PsiError(f"{what}: element {i // POINT_BYTES} is not a ristretto255 point")


def _tag_and_key(value: bytes) -> tuple[bytes, bytes]:
    tag = hashlib.blake2b(value, digest_size=TAG_BYTES, person=b"fedaudit-psi-tag").digest()
    key = hashlib.blake2b(value, digest_size=32, person=b"fedaudit-psi-key").digest()
    return tag, key


# --- the recogniser's side --------------------------------------------------------------------


@dataclass
class Blinded:
    """R's padded, blinded query to one origin, and what R needs to read the answer."""

    points: bytes
    scalar: bytes
    count: int  # real references (the first `count` points, in the order given)


def blind_references(
    run_id: str, origin: str, numbers: Sequence[str], pool: Executor | None = None
) -> Blinded:
    """H(y)^r for each number, then random points up to the bucket size."""
    scalar = new_scalar()
    real = b"".join(reference_point(run_id, origin, n) for n in numbers)
    padding = b"".join(random_element() for _ in range(bucket(len(numbers)) - len(numbers)))
    return Blinded(
        points=blind_parallel(scalar, real, pool) + padding, scalar=scalar, count=len(numbers)
    )


def read_answer(
    blinded: Blinded, evaluated: bytes, table: bytes, pool: Executor | None = None
) -> list[dt.date | None]:
    """For each real reference, in order: the day the origin revoked it, or None."""
    if len(evaluated) != len(blinded.points):
        raise PsiError(
            f"evaluated {len(evaluated) // POINT_BYTES} elements, "
            f"asked {len(blinded.points) // POINT_BYTES}"
        )
    _check_points(evaluated, "evaluated elements")
    entries = parse_table(table)
    inverse = bytes(rbcl.crypto_core_ristretto255_scalar_invert(blinded.scalar))
    values = blind_parallel(inverse, evaluated[: blinded.count * POINT_BYTES], pool)
    days: list[dt.date | None] = []
    for i in range(blinded.count):
        tag, key = _tag_and_key(values[i * POINT_BYTES : (i + 1) * POINT_BYTES])
        sealed = entries.get(tag)
        days.append(None if sealed is None else _open_day(key, sealed))
    return days


def _open_day(key: bytes, sealed: bytes) -> dt.date:
    try:
        return dt.date.fromisoformat(SecretBox(key).decrypt(sealed).decode("ascii"))
    except (CryptoError, ValueError, UnicodeDecodeError) as exc:
        raise PsiError("a matching table entry does not open: tampered answer") from exc


def parse_table(table: bytes) -> dict[bytes, bytes]:
    """tag -> sealed day, after checking the table's shape."""
    if len(table) % ENTRY_BYTES:
        raise PsiError(f"table of {len(table)} bytes is not a whole number of entries")
    entries = {}
    for i in range(0, len(table), ENTRY_BYTES):
        entries[table[i : i + TAG_BYTES]] = table[i + TAG_BYTES : i + ENTRY_BYTES]
    return entries


# --- the origin's side -----------------------------------------------------------------------


def evaluate(key: bytes, points: bytes, pool: Executor | None = None) -> bytes:
    """B^k for every element R sent (checked first: a non-point is refused, not raised to k)."""
    _check_points(points, "blinded references")
    return blind_parallel(key, points, pool)


def revocation_table(
    key: bytes,
    run_id: str,
    origin: str,
    revoked: Iterable[tuple[str, dt.date]],
    pool: Executor | None = None,
) -> bytes:
    """The labelled, padded, tag-sorted table of O's revoked certificates."""
    items = list(revoked)
    points = b"".join(reference_point(run_id, origin, number) for number, _ in items)
    values = blind_parallel(key, points, pool)
    entries = []
    for i, (_, day) in enumerate(items):
        tag, box_key = _tag_and_key(values[i * POINT_BYTES : (i + 1) * POINT_BYTES])
        entries.append(tag + bytes(SecretBox(box_key).encrypt(day.isoformat().encode("ascii"))))
    for _ in range(bucket(len(items)) - len(items)):
        entries.append(secrets.token_bytes(ENTRY_BYTES))
    entries.sort()
    return b"".join(entries)
