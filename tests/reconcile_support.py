"""Federations for reconciliation tests: synthetic bundles with many reciprocity certificates.

The synthetic generator plants a handful of revoked-but-recognised cases; the exactness
test needs hundreds per node, with origin numbers typed differently (case, spaces,
dashes) at the recognising node. `add_reciprocity` rewrites the generated CSVs so, and
`expected_matches` is the clear-text join the PSI must reproduce, written without any of
the production code.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _typed_differently(number: str, rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return number.lower()
    if style == 1:
        return number.replace("-", " ")
    if style == 2:
        return number.replace("-", "")
    return number


def add_reciprocity(bundles: dict[str, Path], per_pair: int, seed: int = 1) -> None:
    """Each node recognises `per_pair` certificates of every other node; a third get revoked."""
    rng = random.Random(seed)
    certs = {code: _read(path / "certificates.csv") for code, path in bundles.items()}
    candidates = {code: _read(path / "candidates.csv")[1] for code, path in bundles.items()}
    revoked_numbers: dict[str, set[str]] = {code: set() for code in bundles}
    for recogniser in bundles:
        _, rows = certs[recogniser]
        serial = 0
        for origin in bundles:
            if origin == recogniser:
                continue
            issued = [
                r
                for r in certs[origin][1]
                if r["pathway"] != "reciprocity" and r["status"] == "valid"
            ]
            for source in rng.sample(issued, min(per_pair, len(issued))):
                serial += 1
                person = rng.choice(candidates[recogniser])
                rows.append(
                    {
                        "certificate_id": f"{recogniser}-RX{serial:05d}",
                        "certificate_no": f"{recogniser}-RX-{serial:05d}",
                        "candidate_id": person["candidate_id"],
                        "qualification_id": source["qualification_id"],
                        "provider_id": "",
                        "pathway": "reciprocity",
                        "origin_municipality": origin,
                        "origin_certificate_no": _typed_differently(source["certificate_no"], rng),
                        "issued_on": source["issued_on"],
                        "status": "valid",
                        "status_changed_on": "",
                    }
                )
                if rng.random() < 1 / 3:
                    revoked_numbers[origin].add(source["certificate_no"])
    for origin, numbers in revoked_numbers.items():
        for row in certs[origin][1]:
            if row["certificate_no"] in numbers:
                issued_on = dt.date.fromisoformat(row["issued_on"])
                row["status"] = "revoked"
                row["status_changed_on"] = (issued_on + dt.timedelta(days=1)).isoformat()
    for code, path in bundles.items():
        _write(path / "certificates.csv", *certs[code])


def _key(number: str) -> str:
    return "".join(ch for ch in number.upper() if ch.isalnum())


def expected_matches(bundles: dict[str, Path]) -> dict[str, set[tuple[str, str, str]]]:
    """Per recogniser: (certificate_id, origin, revoked_on) by a clear-text join of the CSVs."""
    revoked: dict[tuple[str, str], str] = {}
    for code, path in bundles.items():
        for row in _read(path / "certificates.csv")[1]:
            if row["status"] == "revoked" and row["pathway"] != "reciprocity":
                revoked[(code, _key(row["certificate_no"]))] = (
                    row["status_changed_on"] or row["issued_on"]
                )
    out: dict[str, set[tuple[str, str, str]]] = {code: set() for code in bundles}
    for code, path in bundles.items():
        for row in _read(path / "certificates.csv")[1]:
            if row["pathway"] != "reciprocity" or row["status"] not in ("valid", "suspended"):
                continue
            day = revoked.get((row["origin_municipality"], _key(row["origin_certificate_no"])))
            if day is not None:
                out[code].add((row["certificate_id"], row["origin_municipality"], day))
    return out
