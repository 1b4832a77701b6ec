"""False findings on clean federations: the share of audits with any finding, Holm vs Bonferroni.

Simulates clean federations (5 municipalities x 5 providers, equal true rates, rounded
Gaussian noise on every cell; the generator of tests/test_gaps.py) and evaluates each
with the audit's statistics at a tolerance of ~0, where every true-zero gap is a null
hypothesis. At 95% family-wise confidence at most 5% of audits may have any finding.
Prints the measured share for Holm (what the audit uses) and for Bonferroni on the same
audits, with a 95% Clopper-Pearson interval.

    .venv/bin/python bench/clean_false_findings.py [--audits 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scipy.stats import beta

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_gaps import _clean, _federation, _plan

from fedaudit.coordinator.statistics.error_control import bonferroni
from fedaudit.coordinator.statistics.gaps import evaluate


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    low = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return low, high


def main(audits: int) -> None:
    tiny = {"tolerance": 0.001}
    plan = _plan(
        pass_rates=tiny,
        employment=tiny,
        credential_inflation=tiny,
        recognition=tiny,
        appeals=tiny,
        outcome_disparity=tiny,
    )
    holm_hits = bonf_hits = 0
    started = time.monotonic()
    for seed in range(10_000, 10_000 + audits):
        ev = evaluate(plan, _federation(seed, *_clean()))
        holm_hits += bool(ev.findings)
        base = bonferroni(plan, len(ev.tests), ev.metrics)
        bonf_hits += any(t.severity(base.z) is not None for t in ev.tests)
    for name, k in (("holm", holm_hits), ("bonferroni", bonf_hits)):
        low, high = clopper_pearson(k, audits)
        print(
            f"{name}: {k}/{audits} clean audits with any finding = {k / audits:.1%} "
            f"(95% CI {low:.1%}-{high:.1%})"
        )
    print(f"{audits} audits in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audits", type=int, default=200)
    main(parser.parse_args().audits)
