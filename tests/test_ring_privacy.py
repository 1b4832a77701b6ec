"""The blinding ring's privacy: released vectors within their declared sensitivity, noise, ledgers.

A small crafted federation over real gRPC ring nodes (M1, M2, M3, one occupation).
Besides ordinary duplicates and singletons it holds a *bridge*: person X at M3
shares a different match key with each of three persons who are each certified at M1
and M2 (a prefix-only, a Soundex-only and a swapped-names-only match), so removing X
splits one component into three, the worst case the sensitivities must cover.

- `_oracle` counts duplicates in the clear from the raw identities with its own
  normaliser, Soundex and key definitions (written for this test, sharing nothing with
  `fedaudit.node.ring.keys`); the ring's pre-noise counts must equal it.
- Removing each person (all their records at every node) changes every released count
  vector by at most its declared sensitivity: L2 for the Gaussian run, L1 for the
  Laplace run, as the report's privacy section declares them.
- The releases' noise has at least the variance that the declared sensitivity and the
  charged rho require (Gaussian: Delta^2 / (2 rho)), checked on 500 fresh releases of
  the run's counts (false-failure rate <= 1e-4: one-sided tests, Bonferroni over the
  releases, on the sample variance's lower tail, which is lighter than the normal's), and
  the charges stay in the budget.
- Every node's ledger, read after the run, shows the ring's cost charged to the requester.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from dedup_support import (
    REQUESTER,
    release_as_tallied,
    ring_credentials,
    ring_policy,
    spy_on_tally,
    start_ring_node,
    write_febrl_bundle,
)

from fedaudit.common import mechanisms
from fedaudit.common.ring_counting import DedupCounts
from fedaudit.common.ring_protocol import LEGACY_NAME_KEYS
from fedaudit.common.ring_releases import sensitivities
from fedaudit.coordinator.planning.plan import AuditPlan, Checks
from fedaudit.coordinator.ring.config import DedupConfig
from fedaudit.coordinator.ring.relay import GrpcDedupTransport
from fedaudit.coordinator.ring.run import DedupOutcome, run_dedup
from fedaudit.node.domain import Mechanism
from fedaudit.node.ingest.bundle import import_bundle
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.store.db import make_engine

Person = tuple[str, str, str]
"""(given name, family name, date of birth YYYYMMDD): one person, wherever registered."""

X: Person = ("Johnathan", "Smithers", "19800101")
BRIDGED: tuple[Person, ...] = (
    ("Johbbb", "Smibbb", "19800101"),  # shares only the 3-letter prefixes with X
    ("Jonathan", "Smytherz", "19800101"),  # shares only the Soundex codes
    ("Smithers", "Johnathan", "19800101"),  # shares only the swapped-name key
)
OTHERS: dict[Person, tuple[str, ...]] = {
    ("Maria", "Huber", "19700203"): ("M1", "M2", "M3"),
    ("Paul", "Gruber", "19710304"): ("M1", "M3"),
    ("Eva", "Wagner", "19720405"): ("M2", "M3"),
    **{
        (f"Single{c}", f"Person{c}", f"1990010{i + 1}"): (m,)
        for i, (c, m) in enumerate(
            [("a", "M1"), ("b", "M1"), ("c", "M2"), ("d", "M3"), ("e", "M3")]
        )
    },
}
MUNICIPALITIES = ("M1", "M2", "M3")
KEYS = LEGACY_NAME_KEYS
"""Four keys, named explicitly: the bridge needs them, whatever the plan's default becomes."""
BOUND = 1
RHO, EPSILON = 1.0, 2.0
PLAN_G = AuditPlan(name="ring-privacy", requester=REQUESTER, confidence=0.95, checks=Checks())
PLAN_L = AuditPlan(
    name="ring-privacy",
    requester=REQUESTER,
    confidence=0.95,
    checks=Checks(),
    mechanism=Mechanism.DISCRETE_LAPLACE,
)
CONFIG_G = DedupConfig(rho=RHO, keys=KEYS, bound=BOUND, shopping=False, revoked=False)
CONFIG_L = DedupConfig(
    rho=None, epsilon=EPSILON, keys=KEYS, bound=BOUND, shopping=False, revoked=False
)


def federation() -> dict[Person, tuple[str, ...]]:
    """Each person and the municipalities that certified them (same occupation everywhere)."""
    return {X: ("M3",), **dict.fromkeys(BRIDGED, ("M1", "M2")), **OTHERS}


# --- the independent clear-text oracle -----------------------------------------------------------


def _letters(name: str) -> str:
    return "".join(ch for ch in name.lower() if "a" <= ch <= "z")


_CODE = {
    c: d for d, group in enumerate(("bfpv", "cgjkqsxz", "dt", "l", "mn", "r"), 1) for c in group
}


def _soundex(name: str) -> str:
    """American Soundex, written from the textbook rules for this oracle."""
    out, last = [name[0].upper()], _CODE.get(name[0])
    for ch in name[1:]:
        code = _CODE.get(ch)
        if code is not None and code != last:
            out.append(str(code))
        if ch not in "hw":
            last = code
    return "".join(out)[:4].ljust(4, "0")


def _match_values(person: Person) -> set[tuple[str, str]]:
    given, family, dob = _letters(person[0]), _letters(person[1]), person[2]
    return {
        ("exact", f"{given}/{family}/{dob}"),
        ("prefix", f"{given[:3]}/{family[:3]}/{dob}"),
        ("soundex", f"{_soundex(given)}/{_soundex(family)}/{dob}"),
        ("swapped", "/".join(sorted((given, family))) + f"/{dob}"),
    }


def _oracle(people: Mapping[Person, tuple[str, ...]]) -> dict[str, list[int]]:
    """The ring's count vectors in the clear: components of rows sharing any match value."""
    rows = [(p, m) for p, munis in people.items() for m in munis]
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    owner: dict[tuple[str, str], int] = {}
    for i, (p, _) in enumerate(rows):
        for value in _match_values(p):
            j = owner.setdefault(value, i)
            parent[root(i)] = root(j)
    spans: dict[int, set[str]] = defaultdict(set)
    for i, (_, m) in enumerate(rows):
        spans[root(i)].add(m)
    dup = [s for s in spans.values() if len(s) >= 2]
    pairs = list(itertools.combinations(MUNICIPALITIES, 2))
    return {
        "dup_overall": [len(dup)],
        "dup_per_occupation": [len(dup)],
        "overlap": [sum(1 for s in dup if len(s) == k) for k in range(2, len(MUNICIPALITIES) + 1)],
        "pairwise": [sum(1 for s in dup if a in s and b in s) for a, b in pairs],
    }


def _ring_vectors(counts: DedupCounts) -> dict[str, list[int]]:
    """The tally node's pre-noise counts in the oracle's order."""
    pairs = itertools.combinations(MUNICIPALITIES, 2)
    return {
        "dup_overall": [counts.duplicated],
        "dup_per_occupation": list(counts.per_occupation.values()),
        "overlap": [counts.overlap.get(k, 0) for k in range(2, len(MUNICIPALITIES) + 1)],
        "pairwise": [counts.pairwise.get(p, counts.pairwise.get(p[::-1], 0)) for p in pairs],
    }


# --- the federation over gRPC --------------------------------------------------------------------


def _start(tmp: Path, people: Mapping[Person, tuple[str, ...]]) -> tuple[dict, dict]:
    nodes, engines = {}, {}
    credentials = ring_credentials(tmp / "pki", MUNICIPALITIES)
    for code in MUNICIPALITIES:
        records = [
            (f"{code}-{i}", {"given_name": g, "surname": f, "date_of_birth": d})
            for i, ((g, f, d), munis) in enumerate(people.items())
            if code in munis
        ]
        write_febrl_bundle(tmp / code, code, records, national_id=False)
        engine = make_engine(f"sqlite:///{tmp / code}.db")
        import_bundle(engine, tmp / code)
        engines[code] = engine
        nodes[code] = start_ring_node(code, engine, ring_policy(50.0), credential=credentials[code])
    return nodes, engines


def _spent(engines: Mapping[str, object]) -> dict[str, float]:
    now = dt.datetime.now(dt.UTC)
    return {
        code: Ledger(engine, ring_policy(50.0)).status(REQUESTER, now).requester_rho_spent
        for code, engine in engines.items()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A Gaussian and a Laplace ring run on the federation, with every node's ledger around them."""
    nodes, engines = _start(tmp_path_factory.mktemp("ring-privacy"), federation())
    transports = {
        c: GrpcDedupTransport(c, n.address, requester=REQUESTER) for c, n in nodes.items()
    }
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            spy = spy_on_tally(monkeypatch)
            before = _spent(engines)
            gaussian = run_dedup(PLAN_G, transports, "privacy-g", config=CONFIG_G)
            after_g = _spent(engines)
            laplace = run_dedup(PLAN_L, transports, "privacy-l", config=CONFIG_L)
            after_l = _spent(engines)
        yield {
            "gaussian": gaussian,
            "laplace": laplace,
            "ledger": (before, after_g, after_l),
            "counts": {"gaussian": spy.tallies[0][1], "laplace": spy.tallies[1][1]},
        }
    finally:
        for n in nodes.values():
            n.server.stop(None)
        for e in engines.values():
            e.dispose()


def _declared(out: DedupOutcome) -> dict[str, int]:
    return {r["name"]: r["sensitivity"] for r in out.privacy["releases"]}


def test_ring_counts_equal_an_independent_clear_text_oracle(runs: dict) -> None:
    """Both runs' pre-noise counts equal the oracle's, the bridge included."""
    expected = _oracle(federation())
    assert expected["dup_overall"] == [1 + len(OTHERS) - 5]  # X's component, Huber, Gruber, Wagner
    for name in ("gaussian", "laplace"):
        out = runs[name]
        assert out.duplicates_section["status"] == "complete"
        assert _ring_vectors(runs["counts"][name]) == expected


def test_removing_a_person_bridge_included_moves_the_counts_by_its_actual_amount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ring run without X gives the oracle's counts: X's removal splits its component."""
    people = {p: m for p, m in federation().items() if p != X}
    nodes, engines = _start(tmp_path, people)
    transports = {
        c: GrpcDedupTransport(c, n.address, requester=REQUESTER) for c, n in nodes.items()
    }
    spy = spy_on_tally(monkeypatch)
    try:
        out = run_dedup(PLAN_G, transports, "privacy-no-x", config=CONFIG_G)
    finally:
        for n in nodes.values():
            n.server.stop(None)
        for e in engines.values():
            e.dispose()
    assert out.duplicates_section["status"] == "complete"
    assert _ring_vectors(spy.counts) == _oracle(people)
    assert _oracle(people)["dup_overall"][0] - _oracle(federation())["dup_overall"][0] == 2


@pytest.mark.parametrize(("run", "norm"), [("gaussian", 2), ("laplace", 1)])
def test_removing_any_person_stays_within_the_declared_sensitivity(
    runs: dict, run: str, norm: int
) -> None:
    """For every person (all their records at every node), each released vector's change
    is within the sensitivity the run declares (L2 for Gaussian, L1 for Laplace)."""
    out = runs[run]
    declared = _declared(out)
    base = _oracle(federation())
    worst: dict[str, float] = dict.fromkeys(base, 0.0)
    for person in federation():
        without = _oracle({p: m for p, m in federation().items() if p != person})
        for name, vector in base.items():
            diff = np.subtract(without[name], vector)
            worst[name] = max(worst[name], float(np.linalg.norm(diff, ord=norm)))
    print(f"{run}: worst L{norm} change per release {worst}; declared {declared}")
    assert worst["dup_overall"] == 2  # the bridge is in the data
    for name, change in worst.items():
        assert name in declared, f"release {name} has no declared sensitivity"
        assert change <= declared[name], f"{name}: removal moves it by {change} > {declared[name]}"


RELEASES = 500
NOISE_ALPHA = 1e-4


@pytest.mark.parametrize("run", ["gaussian", "laplace"])
def test_release_noise_is_what_the_sensitivity_and_charge_require(runs: dict, run: str) -> None:
    """500 fresh releases of the run's counts: each release's noise variance is at least the
    variance its declared sensitivity and charge require; the charges fit the check's budget.

    Required variance: Gaussian Delta^2 / (2 rho) (the zCDP of the discrete Gaussian),
    Laplace the variance of the discrete Laplace at scale Delta / epsilon. One-sided test,
    false-failure rate <= 1e-4 over all releases (normal approximation of the sample
    variance's distribution with its fourth moment).
    """
    out = runs[run]
    gaussian = run == "gaussian"
    plan, config = (PLAN_G, CONFIG_G) if gaussian else (PLAN_L, CONFIG_L)
    counts = runs["counts"][run]
    assert out.ring is not None
    draws: dict[str, list[list[int]]] = defaultdict(list)
    charged: dict[str, tuple[float, float | None]] = {}
    for _ in range(RELEASES):
        # As the tally node draws them, then checked and charged as the coordinator does.
        releases = release_as_tallied(plan, config, out.ring.municipalities, counts)
        for name, r in releases.values.items():
            draws[name].append(r.values)
            charged[name] = (r.rho, r.epsilon)
    declared = _declared(out)
    # The mechanism's own norm: L2 for the Gaussian, L1 for the (pure-DP) Laplace; the run
    # must declare, and so calibrate to, exactly these.
    norms = sensitivities(len(KEYS), BOUND, len(MUNICIPALITIES))
    assert declared == {n: (norms[n].l2 if gaussian else norms[n].l1) for n in declared}
    z = NormalDist().inv_cdf(1 - NOISE_ALPHA / len(draws))
    lines = []
    for name, rows in draws.items():
        values = np.asarray(rows, dtype=float)
        noise = values - values.mean(axis=0)
        var = float(np.sum(noise**2) / (values.size - values.shape[1]))
        se = math.sqrt(max(float(np.mean(noise**4)) - var * var, 0.0) / values.size)
        rho, eps = charged[name]
        if gaussian:
            required = declared[name] ** 2 / (2 * rho)
        else:
            assert eps is not None
            required = mechanisms.discrete_laplace_variance(declared[name] / eps)
        lines.append(f"{name}: variance {var:.2f} +- {se:.2f}, required {required:.2f}")
        assert var + z * se >= required, lines[-1]
    print("\n".join(lines))
    total_rho = math.fsum(rho for rho, _ in charged.values())
    cap = config.rho if gaussian else (config.epsilon or 0.0) ** 2 / 2
    assert total_rho <= cap * (1 + 1e-9)
    if not gaussian:
        assert math.fsum(e or 0.0 for _, e in charged.values()) <= EPSILON * (1 + 1e-9)


def test_every_node_ledger_shows_the_ring_charge(runs: dict) -> None:
    """Read after each run: every node charged the requester the check's whole cost, which
    covers what the coordinator released, plus its batches' DP dummy padding."""
    before, after_g, after_l = runs["ledger"]
    for code in MUNICIPALITIES:
        gauss = after_g[code] - before[code]
        lap = after_l[code] - after_g[code]
        padding = ring_policy().ring.padding_rho  # the DP dummy padding, its own entry
        assert padding is not None
        assert gauss == pytest.approx(RHO + padding, rel=1e-9), code
        assert lap == pytest.approx(EPSILON**2 / 2 + padding, rel=1e-9), code
        assert gauss >= runs["gaussian"].privacy["rho"] * (1 - 1e-9)
        assert lap >= runs["laplace"].privacy["rho"] * (1 - 1e-9)
