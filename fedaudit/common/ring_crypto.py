"""The cryptography of the blinding ring: ristretto255 tokens, batches, seals and signatures.

* Tokens: `from_hash(SHA-512(key string))` maps a key string to a uniformly random
  ristretto255 element (RFC 9496 element derivation from 64 uniform bytes); every node
  raises every token to its fresh per-run scalar. Exponents commute, so after all N
  nodes a token is `H(k)^(a1...aN)` whichever node started; nobody holding fewer than
  all N scalars can invert it or test a guess (DDH).
* Scalar multiplications are the whole cost, so they run in a pool of worker processes,
  one per core (rbcl holds the GIL, threads do not scale). Workers get the scalar with
  each chunk and keep nothing.
* Every hop's payload is sealed to the next node (X25519 SealedBox, per-run key) and
  signed by the sender (Ed25519) over (run, roster, origin, hop, row count, digest).

rbcl bundles libsodium, so `pip install` alone suffices; PyNaCl (no ristretto255)
provides the boxes and signatures.
"""

from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor
from dataclasses import dataclass

import rbcl
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

POINT_BYTES = 32
SCALAR_BYTES = 32
CHUNK_POINTS = 4096
"""Points per task sent to a worker: 128 KiB, large enough to hide the IPC cost."""

PAYLOAD_CHUNK_BYTES = 1 << 20
"""Plaintext bytes per wire message: 1 MiB (+48 B seal), well below gRPC's 4 MiB cap."""

KIND_PERSON = 1
KIND_CERT = 2

FLAG_CERTIFIED = 1
FLAG_FAILED = 2
FLAG_PASSED = 4
FLAG_REVOKED = 1  # on certificate rows: the origin side

_ROW_HEADER = struct.Struct(">B4sBH")  # kind, isco code, flags, token count
ROW_HEADER_BYTES = _ROW_HEADER.size
SEAL_OVERHEAD = 48
"""Bytes a SealedBox adds to its plaintext (ephemeral public key and MAC)."""


class RingCryptoError(Exception):
    """A payload failed to open, verify or parse (tampered, misrouted or corrupt)."""


# --- group operations -----------------------------------------------------------------------


def hash_to_group(data: bytes) -> bytes:
    """A ristretto255 element from 64 uniform bytes (SHA-512 of the domain-separated key)."""
    return bytes(rbcl.crypto_core_ristretto255_from_hash(hashlib.sha512(data).digest()))


def random_element() -> bytes:
    """A uniformly random element: fills undefined key slots, collides with nothing."""
    return bytes(rbcl.crypto_core_ristretto255_random())


def random_scalar() -> bytearray:
    """A fresh secret scalar (mutable so `wipe` can overwrite it at the end of a run)."""
    return bytearray(rbcl.crypto_core_ristretto255_scalar_random())


def wipe(secret: bytearray) -> None:
    """Overwrite a secret in place (best effort: Python may hold copies)."""
    for i in range(len(secret)):
        secret[i] = 0


def blind_points(scalar: bytes, points: bytes) -> bytes:
    """Raise each 32-byte point of `points` to `scalar` (one process, no pool)."""
    mult = rbcl.crypto_scalarmult_ristretto255
    s = bytes(scalar)
    out = bytearray(len(points))
    for i in range(0, len(points), POINT_BYTES):
        out[i : i + POINT_BYTES] = mult(s, points[i : i + POINT_BYTES])
    return bytes(out)


class _Pool:
    """Holder of the process-wide worker pool (created on first use)."""

    executor: Executor | None = None
    lock = threading.Lock()


def worker_count() -> int:
    """Workers for the scalar multiplications: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def shared_pool() -> Executor:
    """The process-wide pool (spawned, not forked: forking a gRPC process is unsafe)."""
    with _Pool.lock:
        if _Pool.executor is None:
            pool = ProcessPoolExecutor(
                max_workers=worker_count(), mp_context=multiprocessing.get_context("spawn")
            )
            atexit.register(pool.shutdown, wait=False, cancel_futures=True)
            _Pool.executor = pool
        return _Pool.executor


def shutdown_pool() -> None:
    """Stop the worker pool (a process that served the ring calls this before exiting)."""
    with _Pool.lock:
        pool, _Pool.executor = _Pool.executor, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def blind_parallel(scalar: bytes, points: bytes, pool: Executor | None = None) -> bytes:
    """`blind_points` split over the pool's workers in chunks of CHUNK_POINTS."""
    step = CHUNK_POINTS * POINT_BYTES
    if len(points) <= step:
        return blind_points(scalar, points)
    pool = pool or shared_pool()
    s = bytes(scalar)
    parts = pool.map(
        blind_points,
        [s] * ((len(points) + step - 1) // step),
        [points[i : i + step] for i in range(0, len(points), step)],
    )
    return b"".join(parts)


# --- batches --------------------------------------------------------------------------------


@dataclass
class Row:
    """One row of a batch: its kind, occupation and flags travel with it; tokens are blinded."""

    kind: int
    isco_code: str
    flags: int
    tokens: list[bytes]


def encode_rows(rows: Sequence[Row]) -> bytes:
    """Rows as bytes: per row a 8-byte header (kind, ISCO, flags, count) and its tokens."""
    parts = []
    for row in rows:
        parts.append(
            _ROW_HEADER.pack(row.kind, row.isco_code.encode("ascii"), row.flags, len(row.tokens))
        )
        parts.extend(row.tokens)
    return b"".join(parts)


def decode_rows(data: bytes, expected_rows: int) -> list[Row]:
    """Parse `encode_rows` output; any inconsistency is a RingCryptoError."""
    rows = []
    pos, size = 0, len(data)
    try:
        while pos < size:
            kind, isco, flags, count = _ROW_HEADER.unpack_from(data, pos)
            pos += _ROW_HEADER.size
            end = pos + count * POINT_BYTES
            if end > size or kind not in (KIND_PERSON, KIND_CERT):
                raise RingCryptoError("malformed batch row")
            tokens = [data[i : i + POINT_BYTES] for i in range(pos, end, POINT_BYTES)]
            rows.append(Row(kind, isco.decode("ascii"), flags, tokens))
            pos = end
    except (struct.error, UnicodeDecodeError) as exc:
        raise RingCryptoError("malformed batch") from exc
    if len(rows) != expected_rows:
        raise RingCryptoError(f"batch has {len(rows)} rows, the signed header says {expected_rows}")
    return rows


def blind_rows(scalar: bytes, rows: list[Row], pool: Executor | None = None) -> list[Row]:
    """Raise every token of every row to `scalar` (in parallel) and shuffle the rows."""
    flat = b"".join(t for row in rows for t in row.tokens)
    try:
        blinded = blind_parallel(scalar, flat, pool)
    except BrokenExecutor:
        raise
    except RuntimeError as exc:  # libsodium refuses invalid points and identity outputs
        raise RingCryptoError("a token is not a valid group element") from exc
    pos = 0
    out = []
    for row in rows:
        n = len(row.tokens)
        tokens = [blinded[pos + i * POINT_BYTES : pos + (i + 1) * POINT_BYTES] for i in range(n)]
        pos += n * POINT_BYTES
        out.append(Row(row.kind, row.isco_code, row.flags, tokens))
    secrets.SystemRandom().shuffle(out)
    return out


def split_payload(data: bytes) -> list[bytes]:
    """Plaintext pieces of at most PAYLOAD_CHUNK_BYTES (at least one, possibly empty)."""
    if not data:
        return [b""]
    return [data[i : i + PAYLOAD_CHUNK_BYTES] for i in range(0, len(data), PAYLOAD_CHUNK_BYTES)]


# --- keys, seals, signatures ----------------------------------------------------------------


@dataclass
class RunKeys:
    """A node's secrets for one run: blinding scalar, box key and hop-signing key.

    All three are fresh per run and die with it; the node's federation certificate
    vouches for the public halves (`membership_statement`). Wiped at the end.
    """

    scalar: bytearray
    box: PrivateKey
    signing: SigningKey

    @classmethod
    def fresh(cls) -> RunKeys:
        return cls(scalar=random_scalar(), box=PrivateKey.generate(), signing=SigningKey.generate())

    def wipe(self) -> None:
        wipe(self.scalar)
        self.box = PrivateKey.generate()  # drop the references to the run's keys
        self.signing = SigningKey.generate()


def seal(recipient: bytes, data: bytes) -> bytes:
    """Encrypt to a node's per-run X25519 key (anonymous sender; authenticity is the signature)."""
    return bytes(SealedBox(PublicKey(recipient)).encrypt(data))


def unseal(key: PrivateKey, data: bytes) -> bytes:
    try:
        return bytes(SealedBox(key).decrypt(data))
    except CryptoError as exc:
        raise RingCryptoError("a sealed chunk does not open with this node's run key") from exc


def hop_statement(
    run_id: str, roster_digest: bytes, *, origin: str, hop: int, rows: int, digest: bytes
) -> bytes:
    """What the sender of a hop signs: nothing about the batch can change without notice."""
    return b"\x00".join(
        [
            b"fedaudit-dedup-hop/v1",
            run_id.encode(),
            roster_digest,
            origin.encode(),
            str(hop).encode(),
            str(rows).encode(),
            digest,
        ]
    )


def box_key_statement(run_id: str, municipality: str, box_public: bytes) -> bytes:
    """What a node signs to vouch for its per-run box key."""
    return b"\x00".join(
        [b"fedaudit-dedup-boxkey/v1", run_id.encode(), municipality.encode(), box_public]
    )


def membership_statement(
    run_id: str, municipality: str, signing_key: bytes, box_key: bytes, params_digest: bytes
) -> bytes:
    """What a node signs with its X.509 node key: these per-run ring keys are this member's,
    for a run with these parameters (`RingParams.digest`)."""
    return b"\x00".join(
        [
            b"fedaudit-dedup-member/v2",
            run_id.encode(),
            municipality.encode(),
            signing_key,
            box_key,
            params_digest,
        ]
    )


def sign(key: SigningKey, message: bytes) -> bytes:
    return bytes(key.sign(message).signature)


def verify(public: bytes, message: bytes, signature: bytes) -> None:
    try:
        VerifyKey(public).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise RingCryptoError("signature does not verify") from exc


def digest_of(pieces: Iterable[bytes]) -> bytes:
    h = hashlib.sha256()
    for piece in pieces:
        h.update(piece)
    return h.digest()


def iter_chunks(data: bytes) -> Iterator[bytes]:
    yield from split_payload(data)
