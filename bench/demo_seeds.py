"""How many of the demo's planted anomalies the audit finds, over several seeds.

Runs `fedaudit demo --seed S` (the real command: bundles, mTLS nodes, the default plan,
the blinding ring) for each seed and counts, per planted anomaly, whether a finding of
its kind names its municipality (and provider), and whether any finding touches a clean
municipality. Prints one line per seed and a summary.

    .venv/bin/python bench/demo_seeds.py [--seeds 1-10] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from fedaudit.cli.groups.demo import check_planted, flagged_clean
from fedaudit.cli.main import main
from fedaudit.synthetic.federation import generate_federation

RING_KINDS = ("cross_municipality_duplicates", "assessment_shopping", "revoked_still_recognised")


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def run(seed: int, out: Path) -> dict:
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["demo", "--seed", str(seed), "--out", str(out), "--quiet"])
    report = json.loads((out / "report.json").read_text())
    federation = generate_federation(out / "truth", seed=seed)
    quality = check_planted(report, federation)
    ring = {k: any(f["kind"] == k for f in report["findings"]) for k in RING_KINDS}
    pairs = sorted(
        f"{f['subject']['municipality']}+{f['subject'].get('other_municipality')}"
        for f in report["findings"]
        if f["metric"] == "duplicated_persons_pair"
    )
    wrong = flagged_clean(report, federation.clean_municipalities)
    return {
        "seed": seed,
        "exit": code,
        "status": report["audit"]["status"],
        "quality": {f"{c.kind}@{c.municipality}/{c.provider_id or '-'}": c.found for c in quality},
        "ring": ring,
        "pairs": pairs,
        "clean_flagged": [f"{f['kind']}@{f['subject']}" for f in wrong],
        "seconds": round(time.monotonic() - started, 1),
    }


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    base = args.out or Path(tempfile.mkdtemp(prefix="demo-seeds-"))
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    clean_runs = 0
    results = []
    for seed in _seeds(args.seeds):
        r = run(seed, base / f"seed-{seed}")
        results.append(r)
        for k, v in {**r["quality"], **r["ring"]}.items():
            kind = k.split("@")[0]
            total[kind] += 1
            found[kind] += bool(v)
        clean_runs += not r["clean_flagged"]
        print(json.dumps(r), flush=True)
    print("\nfound / planted over seeds, per kind:")
    for kind in total:
        print(f"  {kind}: {found[kind]} / {total[kind]}")
    print(f"runs with no finding in a clean municipality: {clean_runs} / {len(results)}")
    (base / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main_()
