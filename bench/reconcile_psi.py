"""Benchmark of revocation reconciliation's PSI: 10,000 references against 10,000 revocations.

Runs the protocol's four steps as the two nodes run them (blind, evaluate + labelled
table, unblind + open) and prints its wall time next to a baseline measured in the same
run: the same number of raw libsodium ristretto255 scalar multiplications, in one
process and with the worker pool the protocol uses. Their ratio says how much the
protocol adds to the unavoidable group arithmetic. Also prints the same comparison
against a plain (non-private) hash join of the two lists, the "just send the list"
alternative, to show what privacy costs in time here.

    .venv/bin/python bench/reconcile_psi.py [--references 10000] [--revocations 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import random
import time

import rbcl

from fedaudit.common import psi
from fedaudit.common.ring_crypto import blind_parallel, shared_pool, shutdown_pool


def _numbers(n: int, prefix: str, rng: random.Random) -> list[str]:
    return [f"{prefix}-{rng.randrange(2015, 2027)}-{i:06d}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=10_000)
    parser.add_argument("--revocations", type=int, default=10_000)
    parser.add_argument("--overlap", type=float, default=0.1, help="share of references revoked")
    args = parser.parse_args()
    rng = random.Random(1)
    revoked_numbers = _numbers(args.revocations, "M01", rng)
    shared = int(args.references * args.overlap)
    references = revoked_numbers[:shared] + _numbers(args.references - shared, "M01X", rng)
    revoked = [(n, dt.date(2025, 1, 1)) for n in revoked_numbers]
    pool = shared_pool()
    blind_parallel(psi.new_scalar(), psi.random_element() * 5000, pool)  # start the workers

    t0 = time.perf_counter()
    blinded = psi.blind_references("bench", "M01", references, pool=pool)  # R
    key = psi.new_scalar()
    evaluated = psi.evaluate(key, blinded.points, pool=pool)  # O
    table = psi.revocation_table(key, "bench", "M01", revoked, pool=pool)  # O
    days = psi.read_answer(blinded, evaluated, table, pool=pool)  # R
    protocol = time.perf_counter() - t0
    found = sum(d is not None for d in days)
    assert found == shared, (found, shared)

    mults = len(references) + len(blinded.points) // 32 + args.revocations + len(references)
    data = b"".join(psi.random_element() for _ in range(mults))
    scalar = psi.new_scalar()
    t0 = time.perf_counter()
    blind_parallel(scalar, data, pool)
    raw_pool = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, min(len(data), 32 * 20_000), 32):
        rbcl.crypto_scalarmult_ristretto255(scalar, data[i : i + 32])
    raw_one = (time.perf_counter() - t0) * (mults / min(mults, 20_000))

    t0 = time.perf_counter()
    index = {hashlib.sha256(n.encode()).digest() for n, _ in revoked}
    plain = sum(hashlib.sha256(n.encode()).digest() in index for n in references)
    clear = time.perf_counter() - t0
    assert plain == shared
    shutdown_pool()

    print(f"references {len(references)}, revocations {len(revoked)}, matches {found}")
    print(f"padded: query {len(blinded.points) // 32}, table {len(table) // psi.ENTRY_BYTES}")
    print(f"PSI end to end (both nodes' work, no network): {protocol:.2f} s")
    print(f"baseline: {mults} raw scalar multiplications with the pool: {raw_pool:.2f} s")
    print(f"          the same in one process: {raw_one:.2f} s")
    print(f"ratio PSI / raw scalar multiplications (pool): {protocol / raw_pool:.2f}")
    print(
        f"clear-text hash join of the two lists: {clear * 1000:.1f} ms "
        f"(PSI is {protocol / clear:.0f}x slower, and private)"
    )


if __name__ == "__main__":
    main()
