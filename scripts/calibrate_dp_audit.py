#!/usr/bin/env python3
"""Measure the false-failure rate of the privacy tests' normal-approximation checks by simulation.

    .venv/bin/python scripts/calibrate_dp_audit.py [--runs 20000] [--seed 1]

The black-box audit (tests/test_dp_blackbox.py) and the ring noise test
(tests/test_ring_privacy.py) bound shifts, variances and rho with z-tests whose level
assumes the statistic is normal. This script draws releases of a *correct* mechanism
(discrete Laplace exactly, as numpy geometric differences; the discrete Gaussian as a
rounded normal, which has the same tails to within what matters here) with the tests'
own draw counts, applies the same check functions from tests/dp_audit.py, and prints
how often each rejects: at its own level (expected about alpha x runs, usually 0) and
at looser levels (1e-2, 1e-3), where the observed rate shows whether the normal
approximation holds in the tail. Run once when a test's draw counts or levels change;
the numbers go into the tests' docstrings and the issue note. Not part of CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dp_audit import (  # the tests' own check functions
    discrete_laplace,
    rho_lower_bound,
    rounded_gaussian,
    shift_check,
    variance_check,
)

K = 2
LAPLACE_SCALE = 2.0  # epsilon = 1 at K = 2
LAPLACE_VAR = 1.0 / (2.0 * np.sinh(1.0 / (2.0 * LAPLACE_SCALE)) ** 2)
GAUSS_SCALE = 2.0 / np.sqrt(2 * 0.25)  # rho = 0.25 at K = 2
CHECK_ALPHA = 1e-4 / 7
LEVELS = (1e-2, 1e-3, CHECK_ALPHA)


def _simulate(name: str, draw, scale: float, var: float, *, n: int, runs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rejects = {("shift", a): 0 for a in LEVELS}
    rejects |= {("variance", a): 0 for a in LEVELS}
    rejects |= {("rho", a): 0 for a in LEVELS}
    for _ in range(runs):
        d = draw(rng, scale, n)
        dp = K + draw(rng, scale, n)
        for a in LEVELS:
            rejects["shift", a] += not shift_check(d, dp, K, alpha=a).ok
            rejects["variance", a] += not variance_check(d, var, alpha=a).ok
            if draw is rounded_gaussian:
                rejects["rho", a] += rho_lower_bound(d, dp, alpha=a).rho_lb > 0.25
    print(f"\n{name}: n={n} per side, {runs} simulated audits of a correct release")
    for (check, a), count in rejects.items():
        if check == "rho" and draw is not rounded_gaussian:
            continue
        print(f"  {check:9} level {a:.2e}: rejected {count:6d} ({count / runs:.2e})")


def _clean_federations(audits: int, seed: int) -> None:
    """Per clean audit (OpenDP noise): share of |z| > 1.96, mean z, and whether it flagged."""
    import test_gaps as g  # the test module's own simulation

    shares, means, flagged, tiny = [], [], 0, 0
    tiny_plan = g._plan(**{c: {"tolerance": 0.001} for c in g.TINY_TOLERANCE_CHECKS})
    for i in range(audits):
        fed = g._federation(seed + i, *g._clean(), opendp=True)
        ev = g.evaluate(g._plan(), fed)
        z = [t.gap / t.gap_var**0.5 for t in ev.tests]
        shares.append(float(np.mean(np.abs(z) > 1.96)))
        means.append(float(np.mean(z)))
        flagged += bool(ev.findings)
        tiny += bool(g.evaluate(tiny_plan, fed).findings)
    print(f"\nclean federations, {audits} audits with OpenDP noise:")
    print(
        f"  audits with a finding: {flagged} ({flagged / audits:.4f}); at tolerance 0.001: {tiny}"
    )
    print(
        f"  share |z| > 1.96 per audit: mean {np.mean(shares):.5f}, sd {np.std(shares, ddof=1):.5f}"
    )
    print(f"  mean z per audit: mean {np.mean(means):.5f}, sd {np.std(means, ddof=1):.5f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clean", type=int, default=0, help="simulate this many clean audits")
    args = parser.parse_args()
    if args.clean:
        _clean_federations(args.clean, args.seed)
        return 0
    for n in (6000, 2400):
        _simulate(
            "discrete Laplace (eps=1, K=2)",
            discrete_laplace,
            LAPLACE_SCALE,
            LAPLACE_VAR,
            n=n,
            runs=args.runs,
            seed=args.seed,
        )
    _simulate(
        "discrete Gaussian (rho=0.25, K=2)",
        rounded_gaussian,
        GAUSS_SCALE,
        GAUSS_SCALE**2 + 1 / 12,
        n=6000,
        runs=args.runs,
        seed=args.seed + 1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
