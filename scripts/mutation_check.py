#!/usr/bin/env python3
"""Plant known privacy bugs one at a time in a throw-away copy and check the tests catch each.

    .venv/bin/python scripts/mutation_check.py            # relevant tests per mutant
    .venv/bin/python scripts/mutation_check.py --suite    # the whole suite per mutant (slow)
    .venv/bin/python scripts/mutation_check.py M1 M5      # only these mutants

Not part of CI (it runs the tests once per mutant). Run it before resolving an issue
that touches privacy code and put its table in the note.

How: the working tree (uncommitted changes included; .git, .venv and caches left out)
is copied to a temporary directory, and every Python process the tests start imports
the package from that copy: a `sitecustomize.py` on PYTHONPATH puts a finder in front
of the editable install's, mapping `fedaudit`, `fedaudit.node`, `fedaudit.coordinator`
and `fedaudit.audit_reports` to the copy's folders. The script checks that this worked
(module files resolve inside the copy) and that the selected tests pass on the
unmutated copy before it plants anything. Each mutant replaces one exact snippet of
one file; a snippet that no longer occurs exactly once stops the script with the
mutant's name, so the list is kept in step with the code. A mutant is *killed* when
its tests fail (or time out), *survived* when they pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "fedaudit": "fedaudit",
    "fedaudit.node": "node",
    "fedaudit.coordinator": "coordinator",
    "fedaudit.audit_reports": "audit_reports",
}

BLACKBOX = "tests/test_dp_blackbox.py"
LIFECYCLE = "tests/test_charge_lifecycle.py"
RING = "tests/test_ring_privacy.py"
SPLIT = "tests/test_audit_confidence_split.py"
SENSITIVITY = "tests/test_dedup_sensitivity.py"  # remove-one-person over generated federations
NODE = [BLACKBOX, LIFECYCLE, "tests/test_ledger.py", "tests/test_node_grpc.py"]
COHORTS = "tests/test_cohorts.py"
COHORT_AUDIT = "tests/test_cohort_blackbox.py"
ATTACKS = "tests/test_dedup_attacks.py"  # the malicious-auditor regressions, over mTLS


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    description: str
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    # --- the seven of issue 16 ---------------------------------------------------------------
    Mutant(
        "M1",
        "node/query/service.py",
        "max_records_per_person=bound,\n",
        "max_records_per_person=bound + 1,\n",
        "SQL keeps bound + 1 records per person",
        (BLACKBOX,),
    ),
    Mutant(
        "M2",
        "node/query/service.py",
        "                    now=now,\n                    outer=tx,\n",
        "                    now=now,\n",
        # Since issue 10 the charge, the stored answer and the log row commit together and a
        # failure before the commit releases nothing (a discarded draw costs no privacy).
        # The bug of this kind now is a charge committed apart from its release.
        "the charge commits apart from its release and log row",
        (LIFECYCLE,),
    ),
    Mutant(
        "M3",
        "node/query/service.py",
        # Since issue 10 a failure while reading rolls the charge back with the whole
        # transaction (M2 guards that); the bug of this kind now is a log that hides it.
        "            if not isinstance(exc, RefusedError) or isinstance(exc, DataUnavailableError):\n"
        "                event.status = querylog.FAILED",
        "            if False:\n                event.status = querylog.FAILED",
        "a query that failed while reading is logged as answered (the log hides the failure)",
        (LIFECYCLE,),
    ),
    Mutant(
        "M4",
        "node/query/service.py",
        """        cells = _suppress(
            [
                (keys, category, value)
                for (keys, category, _), value in zip(counts, noisy, strict=True)
            ],
            self._policy.suppress_below,
        )
""",
        """        cells = [
            Cell(c.keys, c.category, 0, suppressed=True)
            if c.suppressed
            else Cell(c.keys, c.category, value)
            for c, value in zip(
                _suppress(list(counts), self._policy.suppress_below), noisy, strict=True
            )
        ]
""",
        "suppression decided on the true group totals",
        (BLACKBOX,),
    ),
    Mutant(
        "M5",
        "fedaudit/common/ring_releases.py",
        "c = max(rows, rows * m - 1)",
        "c = rows",
        "duplicate releases ignore bridges (c = the person's rows, not max(RN, RNm - 1))",
        (RING, SENSITIVITY),
    ),
    Mutant(
        "M6",
        "node/ring/service.py",
        "charge=Charge(rho=params.rho, epsilon=params.epsilon),",
        "charge=Charge(rho=params.rho / 10, epsilon=params.epsilon),",
        "each node charges a tenth of the ring's rho at join",
        (RING,),
    ),
    Mutant(
        "M7",
        "coordinator/running/audit.py",
        "family_plan = replace(plan, confidence=1.0 - (1.0 - plan.confidence) / 2) if run_ring "
        "else plan",
        "family_plan = plan",
        "the audit's confidence is not split between quality and duplicate tests",
        (SPLIT,),
    ),
    # --- per-person bounds -------------------------------------------------------------------
    Mutant(
        "B1",
        "node/query/sql.py",
        ".where(inner.c.rn <= literal(max_records_per_person, Integer))",
        ".where(inner.c.rn <= literal(max_records_per_person + 1, Integer))",
        "the bounded histogram keeps K + 1 rows per person",
        (BLACKBOX,),
    ),
    Mutant(
        "B2",
        "node/query/sql.py",
        "rn = func.row_number().over(partition_by=source.person,",
        "rn = func.row_number().over(partition_by=source.order_by[-1],",
        "rows are numbered per record, not per person (no bound at all)",
        (BLACKBOX,),
    ),
    # --- noise scales ------------------------------------------------------------------------
    Mutant(
        "N1",
        "fedaudit/common/mechanisms.py",
        "released = measurement(noise.mechanism, noise.scale)(",
        "released = measurement(noise.mechanism, noise.scale / 2)(",
        "noise drawn at half the declared scale",
        (BLACKBOX,),
    ),
    Mutant(
        "N2",
        "node/query/service.py",
        "            sensitivity=bound,\n            confidence=spec.confidence,\n        )\n"
        "        self._check_minimum(charge)",
        "            sensitivity=1,\n            confidence=spec.confidence,\n        )\n"
        "        self._check_minimum(charge)",
        "a query's noise planned for one record per person while SQL keeps K",
        (BLACKBOX,),
    ),
    # --- charge conversions ------------------------------------------------------------------
    Mutant(
        "C1",
        "fedaudit/common/mechanisms.py",
        "rho=float(dp_c.make_pureDP_to_zCDP(meas).map(sensitivity)),",
        "rho=float(dp_c.make_pureDP_to_zCDP(meas).map(sensitivity)) / 2,",
        "pure-DP answers charged half their rho (eps^2/4)",
        (BLACKBOX,),
    ),
    Mutant(
        "C2",
        "coordinator/ring/config.py",
        "rho=(self.rho or 0.0) if gaussian else (self.epsilon or 0.0) ** 2 / 2,",
        "rho=(self.rho or 0.0) if gaussian else (self.epsilon or 0.0) ** 2 / 4,",
        "a pure-DP ring run asks the nodes for half its rho",
        (RING,),
    ),
    Mutant(
        "C3",
        "fedaudit/common/budget_units.py",
        "return _to_units(rho, ROUND_CEILING)",
        "return _to_units(rho, ROUND_FLOOR)",
        "ledger units round charges down",
        ("tests/test_ledger.py",),
    ),
    # --- replay keys -------------------------------------------------------------------------
    Mutant(
        "R1",
        "node/privacy/ledger.py",
        "entry = self._by_request_id(conn, request_id, requester) if request_id else None",
        "entry = self._by_request_id(conn, request_id, None) if request_id else None",
        "a request id replays another requester's answer",
        tuple(NODE),
    ),
    Mutant(
        "R2",
        "node/query/service.py",
        "            same = found.get(query_hash)\n",
        "            same = None\n",
        "the identical query on the same data draws fresh noise instead of replaying",
        tuple(NODE),
    ),
    # --- sensitivity of each ring release ----------------------------------------------------
    Mutant(
        "S1",
        "fedaudit/common/ring_releases.py",
        '"pairwise": Sensitivity(c * pairs, math.ceil(c * math.sqrt(pairs))),',
        '"pairwise": Sensitivity(c, math.ceil(c * math.sqrt(pairs))),',
        "pairwise L1 sensitivity forgets that a component touches every pair",
        (RING, SENSITIVITY),
    ),
    Mutant(
        "S2",
        "fedaudit/common/ring_releases.py",
        '"dup_per_occupation": Sensitivity(c, c),',
        '"dup_per_occupation": Sensitivity(c, math.ceil(math.sqrt(c))),',
        "per-occupation L2 sensitivity understated",
        (RING, SENSITIVITY),
    ),
    Mutant(
        "S3",
        "fedaudit/common/ring_releases.py",
        "sensitivity = sens[name].l2 if gaussian else sens[name].l1",
        "sensitivity = sens[name].l2",
        "pure-DP ring releases planned with the L2 sensitivity",
        (RING,),
    ),
    # --- the tally node (docs/dedup.md) ---------------------------------------------------------
    Mutant(
        "T1",
        "node/ring/service.py",
        "            run.tallied = True  # before any work",
        "            pass  # before any work",
        "a run can be tallied twice (a second noisy draw of the same exact counts)",
        (ATTACKS,),
    ),
    Mutant(
        "T2",
        "fedaudit/common/ring_crypto.py",
        "            box_key,\n            params_digest,\n        ]",
        "            box_key,\n        ]",
        "membership proofs do not cover the run's parameters (the tally's rho can differ)",
        (ATTACKS,),
    ),
    Mutant(
        "T3",
        "node/ring/service.py",
        "            or not math.isclose(params.rho, epsilon * epsilon / 2, rel_tol=1e-9)\n",
        "",
        "a Laplace run is charged less rho than the epsilon the tally releases costs",
        (ATTACKS,),
    ),
    # --- cohort accounting (docs/cohorts.md) ---------------------------------------------------
    Mutant(
        "K1",
        "node/query/catalogue.py",
        "if dim in spec.filters or dim in WINDOW_DIMENSIONS",
        'if (dim in spec.filters and dim != "cohort") or dim in WINDOW_DIMENSIONS',
        "a cohort filter is charged but not applied in SQL (reads other cohorts' persons)",
        (COHORT_AUDIT, COHORTS),
    ),
    Mutant(
        "K2",
        "node/privacy/cohorts.py",
        "        if total > best:\n            best, where = total, point",
        "        if best < 0 or total < best:\n            best, where = total, point",
        "caps checked against the least charged cohort instead of the most charged",
        ("tests/test_ledger.py", COHORTS),
    ),
    Mutant(
        "K3",
        "node/privacy/cohorts.py",
        "start = EARLIEST if index == 0 else key",
        "start = key",
        "the first cohort key is not charged for the earlier months it holds",
        (COHORTS,),
    ),
    Mutant(
        "K4",
        "node/privacy/ledger.py",
        "        return ((co.EARLIEST, co.add_months(last, 1)),)",
        "        return ((last, co.add_months(last, 1)),)",
        "the ring and reconciliation charged only the newest cohorts",
        (COHORTS,),
    ),
    Mutant(
        "K5",
        "node/query/service.py",
        "                self._check_unchanged(tx, state)\n",
        "",
        "a query counting data of an import that landed meanwhile is charged for the old cohorts",
        (COHORTS,),
    ),
    # --- error control -----------------------------------------------------------------------
    Mutant(
        "E1",
        "coordinator/statistics/error_control.py",
        "z = NormalDist().inv_cdf(1.0 - alpha / (2 * m))",
        "z = NormalDist().inv_cdf(1.0 - alpha / 2)",
        "quality tests not corrected for multiplicity",
        ("tests/test_gaps.py", SPLIT),
    ),
    Mutant(
        "E2",
        "coordinator/ring/release.py",
        "confidence = 1.0 - alpha / branches",
        "confidence = 1.0 - alpha",
        "duplicate tests not corrected for multiplicity",
        (SPLIT, "tests/test_ring_findings.py"),
    ),
)


def _apply(copy: Path, mutant: Mutant) -> str:
    """Plant `mutant` in the copy; return the original text. Fails loudly on a stale snippet."""
    target = copy / mutant.path
    text = target.read_text()
    found = text.count(mutant.old)
    if found != 1:
        raise SystemExit(
            f"{mutant.name}: its snippet occurs {found} times in {mutant.path} (needs exactly "
            "once); update the mutant to the current code"
        )
    target.write_text(text.replace(mutant.old, mutant.new))
    return text


SITECUSTOMIZE = '''"""Written by scripts/mutation_check.py: import fedaudit from the mutation copy."""
import importlib.util
import sys

_MAPPING = {mapping!r}


class _CopyFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        root = _MAPPING.get(fullname)
        if root is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, root + "/__init__.py", submodule_search_locations=[root]
        )


sys.meta_path.insert(0, _CopyFinder)
'''


def _make_copy(tmp: Path) -> tuple[Path, dict[str, str]]:
    copy = tmp / "repo"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules", "*.pyc"
        ),
        symlinks=True,
    )
    modules = tmp / "site"
    modules.mkdir()
    mapping = {name: str(copy / folder) for name, folder in PACKAGES.items()}
    (modules / "sitecustomize.py").write_text(SITECUSTOMIZE.format(mapping=mapping))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(modules), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    foreign = ROOT / "tests" / "foreign_client" / "node_modules"
    if foreign.is_dir():  # the Node.js client's dependencies: share, don't copy
        (copy / "tests" / "foreign_client" / "node_modules").symlink_to(foreign)
    return copy, env


def _check_imports(copy: Path, env: dict[str, str]) -> None:
    probe = (
        "import fedaudit, fedaudit.node.query.service as s, fedaudit.coordinator.ring.release as r, "
        "fedaudit.common.mechanisms as m, fedaudit.audit_reports as a; "
        "print('\\n'.join(x.__file__ for x in (fedaudit, s, r, m, a)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=copy, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    stray = [f for f in out if not Path(f).resolve().is_relative_to(copy.resolve())]
    if stray:
        raise SystemExit(f"the copy is not what gets imported: {stray}")


def _run_tests(
    copy: Path, env: dict[str, str], tests: list[str], timeout: float, first_failure: bool
) -> tuple[str, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if first_failure:
        cmd.append("-x")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [*cmd, *tests],
            check=False,
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, ""
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return ("passed" if proc.returncode == 0 else "failed"), time.monotonic() - started, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="only these mutants (default: all)")
    parser.add_argument("--suite", action="store_true", help="run the whole suite per mutant")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per mutant run")
    parser.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")

    tmp = Path(tempfile.mkdtemp(prefix="fedaudit-mutants-"))
    try:
        copy, env = _make_copy(tmp)
        _check_imports(copy, env)
        for mutant in chosen:  # every snippet must match before anything runs
            (copy / mutant.path).write_text(_apply(copy, mutant))
        selections = {m.name: [] if args.suite else list(m.tests) for m in chosen}
        baseline = sorted({t for tests in selections.values() for t in tests})
        print(f"copy: {copy}\nbaseline: {'the whole suite' if args.suite else ' '.join(baseline)}")
        status, seconds, tail = _run_tests(copy, env, baseline, args.timeout, False)
        print(f"baseline {status} in {seconds:.0f} s: {tail}")
        if status != "passed":
            print("the unmutated copy must pass first; fix that before judging mutants")
            return 2
        rows = []
        for mutant in chosen:
            original = _apply(copy, mutant)
            try:
                status, seconds, tail = _run_tests(
                    copy, env, selections[mutant.name], args.timeout, True
                )
            finally:
                (copy / mutant.path).write_text(original)
            verdict = "killed" if status in ("failed", "timeout") else "SURVIVED"
            rows.append((mutant, verdict, seconds))
            print(f"{mutant.name:4} {verdict:8} {seconds:6.0f} s  {mutant.description}  [{tail}]")
            sys.stdout.flush()
        print("\n| mutant | change | result |\n|---|---|---|")
        for mutant, verdict, _ in rows:
            print(f"| {mutant.name} | {mutant.description} ({mutant.path}) | {verdict} |")
        survived = [m.name for m, v, _ in rows if v != "killed"]
        print(
            f"\n{len(rows) - len(survived)} of {len(rows)} killed"
            + (f"; survived: {', '.join(survived)}" if survived else "")
        )
        return 1 if survived else 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
