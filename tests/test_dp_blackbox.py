"""Black-box statistical privacy audit of the node's count endpoint (research/dp-libraries.md §3.2).

The auditor asks the same query many times on two neighbouring databases, D and
D' = D plus one person with several records in one cell, and lower-bounds the
privacy loss actually provided from a threshold event with Clopper-Pearson
intervals (the DP-Sniper / DP-Auditorium idea): the threshold is chosen on a
separate sample, then

    eps_lb = log((CP_lower(P'[X >= t]) - delta) / CP_upper(P[X >= t]))

at 1 - 1e-4 confidence (Bonferroni over the two bounds), so a correct node fails a
run at most once in 10^4. A lower bound above the claimed
epsilon proves a violation; one below it is evidence, not proof, of privacy, which is
why the auditor is also pointed at a deliberately mis-bounded node and must flag it.

What is sampled is the node's own release pipeline on real SQLite databases:
`catalogue.validate` and `catalogue.true_counts` (the SQL with the policy's per-person
bound) feeding `mechanisms.plan_noise` / `add_noise` (OpenDP), exactly as
`NodeService.query` calls them. Tens of thousands of draws are needed for a sharp
bound and a full query costs ~5 ms (two ledger transactions and a query-log row), so
the bulk draws one noise vector over n copies of the audited cell's true count, which
is n independent releases of that cell. A second test runs the complete `NodeService.query` path (policy,
replay check, ledger, query log) a few hundred times on the same databases and
checks that it releases the same distribution the bulk audit measured.

The catalogue has only count histograms (no sum endpoint), so the count endpoint is
audited: `appeal_outcomes`, whose policy bound is K = 2 records per person.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import structlog
from factories import RegistryFactory
from sqlalchemy import Engine, insert, update

from fedaudit.common import mechanisms
from fedaudit.node.domain import Answer, Mechanism, QuerySpec
from fedaudit.node.privacy.policy import Policy, parse_policy
from fedaudit.node.query import catalogue
from fedaudit.node.query.service import NodeService
from fedaudit.node.store.models import DataVersion, LedgerEntry

TEMPLATE = "appeal_outcomes"
CELL = "dismissed"
K = 2
EXTRA_RECORDS = 4
"""The added person's appeals, all in one cell: the SQL must keep only K of them."""
ALPHA = 1e-4
"""The bound holds with probability 1 - ALPHA: a correct node fails a test at most 1 run in 10^4."""
N_SELECT = 20_000
N_EVAL = 100_000
"""Draws per database for choosing the threshold and for the bound (as in §3.2)."""
N_NODE = 160
"""Full `NodeService.query` calls per database for the end-to-end check (~5 ms each)."""

Sampler = Callable[[str, int], list[int]]
_QUERY_NUMBERS = itertools.count()
"""Shared by every sampler: request ids and queries are never reused on a database."""


# --- Clopper-Pearson bounds without scipy: bisection on the binomial CDF -----------------


def _log_pmf(i: int, n: int, log_p: float, log_q: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * log_p
        + (n - i) * log_q
    )


def _tail(start: int, stop: int, step: int, *, n: int, log_p: float, log_q: float) -> float:
    """Sum of the pmf from `start` towards `stop`, away from the mode: terms only shrink,
    so the sum stops once they fall below 1e-17 of the first."""
    first = _log_pmf(start, n, log_p, log_q)
    total = 0.0
    for i in range(start, stop, step):
        term = _log_pmf(i, n, log_p, log_q) - first
        if term < -40:
            break
        total += math.exp(term)
    return math.exp(first) * total


def _binomial_sf(k: int, n: int, p: float) -> float:
    """P[Bin(n, p) >= k], summing whichever tail lies away from the mode."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    if k > n * p:
        return min(1.0, _tail(k, n + 1, 1, n=n, log_p=log_p, log_q=log_q))
    return max(0.0, 1.0 - _tail(k - 1, -1, -1, n=n, log_p=log_p, log_q=log_q))


def cp_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound: the p with P[Bin(n, p) >= k] = alpha."""
    if k == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _binomial_sf(k, n, mid) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: the p with P[Bin(n, p) <= k] = alpha."""
    if k == n:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 1.0 - _binomial_sf(k + 1, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def test_clopper_pearson_matches_known_values() -> None:
    """The bisection bounds match the textbook 95% interval for 50/100 and the closed form 1 - (a)^(1/n) at k = 0."""
    assert cp_lower(50, 100, 0.025) == pytest.approx(0.398321, abs=1e-5)
    assert cp_upper(50, 100, 0.025) == pytest.approx(0.601679, abs=1e-5)
    assert cp_upper(0, 1000, 0.025) == pytest.approx(1 - 0.025 ** (1 / 1000), abs=1e-9)
    assert cp_lower(1000, 1000, 0.025) == pytest.approx(0.025 ** (1 / 1000), abs=1e-9)


# --- the auditor ----------------------------------------------------------------------------


def eps_lower_bound(
    sample: Sampler, *, delta: float = 0.0, n_select: int = N_SELECT, n_eval: int = N_EVAL
) -> tuple[float, float]:
    """(1 - ALPHA)-confidence lower bound on the epsilon the endpoint provides, and its threshold.

    Both directions of the neighbour relation are tried (the added person may push the
    cell up; a threshold `X <= t` covers the removal view), each on its own selection
    sample; the bound is taken on fresh samples, Bonferroni over the two CP bounds and
    the two directions.
    """
    s0, s1 = sample("D", n_select), sample("D'", n_select)
    best: tuple[float, int, int] = (-1.0, 0, 1)
    for sign in (1, -1):
        c0, c1 = Counter(sign * x for x in s0), Counter(sign * x for x in s1)
        above0 = above1 = 0
        for t in sorted(set(c0) | set(c1), reverse=True):  # tail counts, highest t first
            above0 += c0[t]
            above1 += c1[t]
            if above0 and above1 >= 0.05 * n_select and above1 / above0 > best[0]:
                best = (above1 / above0, t, sign)
    _, t, sign = best
    e0, e1 = sample("D", n_eval), sample("D'", n_eval)
    k1 = sum(1 for x in e1 if sign * x >= t)
    k0 = sum(1 for x in e0 if sign * x >= t)
    a = ALPHA / 2
    ratio = (cp_lower(k1, n_eval, a) - delta) / cp_upper(k0, n_eval, a)
    return (math.log(ratio) if ratio > 1 else 0.0), sign * t


# --- neighbouring registries ----------------------------------------------------------------


def _registry(extra_person: bool) -> RegistryFactory:
    """D: 30 persons with one appeal each; D': the same plus one person with 4 dismissed appeals."""
    reg = RegistryFactory(municipality_code="M01")
    outcomes = ("dismissed", "upheld", "pending")
    for i in range(30):
        person = reg.candidate(sex=("female", "male")[i % 2], candidate_id=f"P{i:03d}")
        reg.appeal(person, f"2024-0{1 + i % 9}-10", outcome=outcomes[i % 3], appeal_id=f"AP{i:03d}")
    if extra_person:
        person = reg.candidate(candidate_id="X001")
        for j in range(EXTRA_RECORDS):
            reg.appeal(person, f"2024-05-{10 + j}", outcome=CELL, appeal_id=f"AX{j}")
    return reg


def _policy() -> Policy:
    return parse_policy(
        {
            "version": 1,
            "requesters": {"auditor": {"rho_per_period": 1_000_000.0}},
            "budget": {"period": "year", "node_rho_total": 1_000_000.0, "max_rho_per_request": 1.0},
            "reliability": {"suppress_below": 0},  # audit the raw noisy cells
            "bounds": {TEMPLATE: K},
            "periods": {"first": 2024, "last": 2024},
        },
        source="<audit policy>",
    )


def _build(url: str, extra_person: bool) -> Engine:
    engine = _registry(extra_person).build(url)
    with engine.begin() as conn:
        conn.execute(
            insert(DataVersion.__table__),
            {
                "version": "v1-audit",
                "bundle_digest": "audit",
                "imported_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                "reference_date": dt.date(2026, 1, 1),
                "row_counts": "{}",
            },
        )
    return engine


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Engine]]:
    """D and D' as node databases (SQLite files)."""
    root = tmp_path_factory.mktemp("dp-audit")
    engines = {
        "D": _build(f"sqlite:///{root / 'd.db'}", extra_person=False),
        "D'": _build(f"sqlite:///{root / 'd-prime.db'}", extra_person=True),
    }
    yield engines
    for engine in engines.values():
        engine.dispose()


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Thousands of queries: keep structlog's console output (and its cost) out of the loop."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def pipeline_sampler(
    engines: dict[str, Engine], spec: QuerySpec, *, sql_bound: int = K, noise_bound: int = K
) -> Sampler:
    """Samples of the audited cell from the node's release pipeline (see the module docstring).

    `sql_bound` and `noise_bound` are the policy's K in a correct node; a test passes
    different values to build a deliberately broken one.
    """
    true: dict[str, list[int]] = {}
    for name, engine in engines.items():
        with engine.connect() as conn:
            keys = catalogue.dimension_keys(conn, _policy().periods)
            template, params = catalogue.validate(spec, keys)
            rows = catalogue.true_counts(
                conn,
                template,
                spec,
                keys,
                params,
                max_records_per_person=sql_bound,
                reference_date=dt.date(2026, 1, 1),
            )
        true[name] = [count for _, _, count in rows]
        cell = [category for _, category, _ in rows].index(CELL)
    noise, _ = mechanisms.plan_noise(
        spec.mechanism,
        rho=spec.rho,
        epsilon=spec.epsilon,
        sensitivity=noise_bound,
        confidence=0.95,
    )

    def sample(which: str, n: int) -> list[int]:
        # Cells get independent draws, so the audited cell's n releases are one vector of
        # n copies of its true count (the other cells' noise says nothing about it).
        return mechanisms.add_noise(noise, [true[which][cell]] * n)

    return sample


def node_sampler(engines: dict[str, Engine], spec: QuerySpec) -> tuple[Sampler, list[Answer]]:
    """Samples of the audited cell, each from a fresh query through `NodeService.query`."""
    services = {name: NodeService(engine, _policy()) for name, engine in engines.items()}
    answers: list[Answer] = []

    def sample(which: str, n: int) -> list[int]:
        out = []
        for _ in range(n):
            i = next(_QUERY_NUMBERS)
            fresh = QuerySpec(
                template=spec.template,
                mechanism=spec.mechanism,
                rho=spec.rho,
                epsilon=spec.epsilon,
            )
            answer = services[which].query("auditor", f"audit-{i}", fresh)
            assert not answer.replayed
            # The node replays a stored answer to the same query (any spelling of it), so
            # retire this one for the next sample to be fresh noise: its charge stays.
            with engines[which].begin() as conn:
                conn.execute(
                    update(LedgerEntry)
                    .where(LedgerEntry.state == "released")
                    .values(state="failed")
                )
            answers.append(answer)
            out.append(next(c.estimate for c in answer.cells if c.category == CELL))
        return out

    return sample, answers


def test_neighbours_differ_by_exactly_k_in_one_cell(neighbours: dict[str, Engine]) -> None:
    """The SQL bound holds: D' adds 4 records of one person, the true counts move by K = 2 in one cell."""
    counts = {}
    spec = QuerySpec(TEMPLATE, mechanism=Mechanism.DISCRETE_LAPLACE, epsilon=1.0)
    for name, engine in neighbours.items():
        with engine.connect() as conn:
            keys = catalogue.dimension_keys(conn, ["2024"])
            template, params = catalogue.validate(spec, keys)
            counts[name] = catalogue.true_counts(
                conn,
                template,
                spec,
                keys,
                params,
                max_records_per_person=K,
                reference_date=dt.date(2026, 1, 1),
            )
    diff = {
        c: b[2] - a[2]
        for a, b, c in zip(counts["D"], counts["D'"], template.categories({}), strict=True)
    }
    assert diff == {"upheld": 0, "dismissed": K, "withdrawn": 0, "pending": 0}


def test_laplace_count_endpoint_does_not_exceed_claimed_epsilon(
    neighbours: dict[str, Engine],
) -> None:
    """Pure-epsilon requests: the measured epsilon lower bound stays at or below the charged epsilon."""
    spec = QuerySpec(TEMPLATE, mechanism=Mechanism.DISCRETE_LAPLACE, epsilon=1.0)
    claimed = mechanisms.plan_noise(
        Mechanism.DISCRETE_LAPLACE, rho=None, epsilon=1.0, sensitivity=K, confidence=0.95
    )[1].epsilon
    assert claimed is not None
    lb, t = eps_lower_bound(pipeline_sampler(neighbours, spec))
    print(
        f"Laplace count (K={K}, person with {EXTRA_RECORDS} records, {N_EVAL} draws per side): "
        f"claimed eps={claimed:.4f}, measured eps_lb={lb:.4f} (event X >= {t})"
    )
    assert lb <= claimed
    assert lb > 0.8 * claimed, "the auditor lost its power; its bound would say nothing"


def test_gaussian_count_endpoint_does_not_exceed_claimed_epsilon_delta(
    neighbours: dict[str, Engine],
) -> None:
    """zCDP requests: the lower bound at delta stays below the (eps, delta) equivalent of the charged rho."""
    rho, delta = 0.25, 1e-6
    spec = QuerySpec(TEMPLATE, mechanism=Mechanism.DISCRETE_GAUSSIAN, rho=rho)
    claimed = mechanisms.epsilon_equivalent(rho, delta)
    lb, t = eps_lower_bound(pipeline_sampler(neighbours, spec), delta=delta)
    print(
        f"Gaussian count (K={K}): rho={rho} -> claimed eps={claimed:.4f} at delta={delta}; "
        f"measured eps_lb={lb:.4f} (event X >= {t})"
    )
    assert lb <= claimed


@pytest.mark.parametrize(
    ("sql_bound", "noise_bound", "true_eps"),
    [(100, K, 2.0), (K, 1, 2.0)],
    ids=["sql-forgets-the-bound", "noise-assumes-k-1"],
)
def test_auditor_catches_a_mis_bounded_node(
    neighbours: dict[str, Engine], sql_bound: int, noise_bound: int, true_eps: float
) -> None:
    """A node whose SQL keeps more records than its noise assumes is flagged (eps_lb > claimed)."""
    spec = QuerySpec(TEMPLATE, mechanism=Mechanism.DISCRETE_LAPLACE, epsilon=1.0)
    sampler = pipeline_sampler(neighbours, spec, sql_bound=sql_bound, noise_bound=noise_bound)
    lb, t = eps_lower_bound(sampler)
    print(f"mis-bounded node (claims eps=1.0, true eps={true_eps}): eps_lb={lb:.4f} (X >= {t})")
    assert lb > 1.0


def test_full_query_path_releases_the_audited_distribution(neighbours: dict[str, Engine]) -> None:
    """NodeService.query (ledger, replay, log) releases the pipeline's noise: same scale, shift K, eps_lb <= eps."""
    spec = QuerySpec(TEMPLATE, mechanism=Mechanism.DISCRETE_LAPLACE, epsilon=1.0)
    sample, answers = node_sampler(neighbours, spec)
    planned, charge = mechanisms.plan_noise(
        Mechanism.DISCRETE_LAPLACE, rho=None, epsilon=1.0, sensitivity=K, confidence=0.95
    )
    lb, t = eps_lower_bound(sample, n_select=N_NODE // 4, n_eval=N_NODE)
    assert {(a.noise.scale, a.noise.sensitivity_l1, a.charge.epsilon) for a in answers} == {
        (planned.scale, K, charge.epsilon)
    }
    d = [next(c.estimate for c in a.cells if c.category == CELL) for a in answers]
    half = len(d) // 2  # samples alternate per call: D then D' for selection and evaluation
    on_d = d[: N_NODE // 4] + d[N_NODE // 2 : N_NODE // 2 + N_NODE]
    on_d_prime = d[N_NODE // 4 : N_NODE // 2] + d[N_NODE // 2 + N_NODE :]
    assert len(on_d) == len(on_d_prime) == half
    shift = statistics.fmean(on_d_prime) - statistics.fmean(on_d)
    se = math.sqrt(2 * planned.variance / half)
    print(
        f"NodeService.query path: {len(answers)} queries, mean shift {shift:.3f} "
        f"(expected {K}, se {se:.3f}), eps_lb={lb:.4f} (X >= {t}), claimed {charge.epsilon:.4f}"
    )
    assert abs(shift - K) < 5 * se
    assert statistics.variance(on_d) == pytest.approx(planned.variance, rel=0.6)
    assert lb <= (charge.epsilon or 0.0)
