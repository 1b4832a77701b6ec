"""Exact counts of the blinding ring's output: components, shopping, revoked certificates.

Counting is a union-find over person rows that share any identity token (record-level
OR across keys). It yields, per component, the municipalities where the person was
certified; the shopping check compares, inside a component, a pass month token of one
municipality with the fail window tokens of another; certificate rows match a
recognised certificate with a revoked origin certificate.

The counts here are exact and never leave the tally node, the roster member that opens
the fully blinded batches (`fedaudit.node.ring.service`): only their DP releases
(`fedaudit.common.ring_releases`) do. Kept apart so the seam tests compare them with a
clear-text oracle without any noise or network in the way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedaudit.common import ring_crypto as rc
from fedaudit.common.ring_protocol import SHOPPING_WINDOW_MONTHS, LabelledRow

FAIL_WINDOW = SHOPPING_WINDOW_MONTHS + 1


@dataclass
class DedupCounts:
    """Exact counts before noise: the internal seam tests compare with a clear-text oracle."""

    municipalities: tuple[str, ...]
    duplicated: int = 0
    per_occupation: dict[str, int] = field(default_factory=dict)
    occupations: tuple[str, ...] = ()
    overlap: dict[int, int] = field(default_factory=dict)
    pairwise: dict[tuple[str, str], int] = field(default_factory=dict)
    shopping: int = 0
    shopping_by_passing: dict[str, int] = field(default_factory=dict)
    revoked: int = 0
    revoked_by_pair: dict[tuple[str, str], int] = field(default_factory=dict)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def count_rows(
    rows: Sequence[LabelledRow], municipalities: Sequence[str], keys: int
) -> DedupCounts:
    """Union-find over person rows sharing any of their first `keys` tokens, then count."""
    counts = DedupCounts(municipalities=tuple(municipalities))
    people = [r for r in rows if r.row.kind == rc.KIND_PERSON]
    uf = _UnionFind(len(people))
    first: dict[bytes, int] = {}
    for i, r in enumerate(people):
        for token in r.row.tokens[:keys]:
            j = first.setdefault(token, i)
            if j != i:
                uf.union(j, i)
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(len(people)):
        components[uf.find(i)].append(i)
    occupations = sorted({r.row.isco_code for r in people})
    counts.occupations = tuple(occupations)
    counts.per_occupation = dict.fromkeys(occupations, 0)
    counts.shopping_by_passing = dict.fromkeys(municipalities, 0)
    for members in components.values():
        certified = sorted(
            {people[i].origin for i in members if people[i].row.flags & rc.FLAG_CERTIFIED}
        )
        if len(certified) >= 2:
            counts.duplicated += 1
            isco = people[members[0]].row.isco_code
            counts.per_occupation[isco] += 1
            counts.overlap[len(certified)] = counts.overlap.get(len(certified), 0) + 1
            for x in range(len(certified)):
                for y in range(x + 1, len(certified)):
                    pair = (certified[x], certified[y])
                    counts.pairwise[pair] = counts.pairwise.get(pair, 0) + 1
        passing = _shopping(people, members, keys)
        if passing:
            counts.shopping += 1
            for muni in passing:
                counts.shopping_by_passing[muni] += 1
    _count_certificates(rows, counts)
    return counts


def _shopping(people: Sequence[LabelledRow], members: Sequence[int], keys: int) -> set[str]:
    """Municipalities where someone in this component passed within 12 months of a fail
    in another municipality."""
    windows: dict[bytes, set[str]] = defaultdict(set)
    for i in members:
        row = people[i].row
        if row.flags & rc.FLAG_FAILED:
            for token in row.tokens[keys : keys + FAIL_WINDOW]:
                windows[token].add(people[i].origin)
    if not windows:
        return set()
    passing = set()
    for i in members:
        row = people[i].row
        if row.flags & rc.FLAG_PASSED:
            origins = windows.get(row.tokens[-1], set())
            if origins - {people[i].origin}:
                passing.add(people[i].origin)
    return passing


def _count_certificates(rows: Sequence[LabelledRow], counts: DedupCounts) -> None:
    revoked_at: dict[bytes, set[str]] = defaultdict(set)
    recognised_at: dict[bytes, set[str]] = defaultdict(set)
    for r in rows:
        if r.row.kind != rc.KIND_CERT:
            continue
        target = revoked_at if r.row.flags & rc.FLAG_REVOKED else recognised_at
        target[r.row.tokens[0]].add(r.origin)
    for token, origins in revoked_at.items():
        matched = False
        for b in recognised_at.get(token, ()):
            for a in origins:
                if a != b:
                    counts.revoked_by_pair[(b, a)] = counts.revoked_by_pair.get((b, a), 0) + 1
                    matched = True
        if matched:
            counts.revoked += 1
