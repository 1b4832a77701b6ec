"""The privacy ledger: exact arithmetic, both caps, refusals, state changes and races."""

from __future__ import annotations

import datetime as dt
import math
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, func, select

from fedaudit.node.domain import Charge, Mechanism
from fedaudit.node.errors import (
    BudgetExhaustedError,
    InvalidParametersError,
    RequesterNotAllowedError,
)
from fedaudit.node.privacy.cohorts import ALL, EARLIEST, peak
from fedaudit.node.privacy.ledger import (
    DuplicateRequestError,
    Ledger,
    LedgerStateError,
    cap_to_units,
    rho_to_units,
    units_to_rho,
    units_to_text,
)
from fedaudit.node.privacy.policy import Policy, example_policy
from fedaudit.node.store.db import create_schema, make_engine
from fedaudit.node.store.models import BudgetLock, LedgerCohortRange, LedgerEntry

NOW = dt.datetime(2026, 11, 15, 12, 0, tzinfo=dt.UTC)
THREADS = 16


@pytest.fixture(name="engine")
def _engine(db_url: str) -> Iterator[Engine]:
    """A node database with its schema, with a pool big enough for every racing thread."""
    engine = make_engine(db_url, pool_size=THREADS + 4, max_overflow=0)
    create_schema(engine)
    yield engine
    engine.dispose()


def _policy(
    requesters: dict[str, float] | None = None,
    *,
    node_total: float = 1.5,
    per_request: float = 0.5,
    shares: dict[str, float] | None = None,
) -> Policy:
    """By default the board may spend 1.25 of the node's 1.5 over all periods, `other` 0.25."""
    if requesters is None and shares is None:
        shares = {"board": 1.25, "other": 0.25}
    return example_policy(
        requesters or {"board": 1.0, "other": 1.0},
        node_rho_total=node_total,
        max_rho_per_request=per_request,
        period="quarter",
        node_shares=shares,
    )


def _reserve(
    ledger: Ledger,
    request_id: str,
    rho: float,
    *,
    requester: str = "board",
    now: dt.datetime = NOW,
    query_hash: str = "q1",
    data_version: str = "v1",
    cohorts: tuple[tuple[str, str], ...] = ALL,
) -> int:
    return ledger.reserve(
        cohorts=cohorts,
        request_id=request_id,
        requester=requester,
        template="certificates_issued",
        template_version="1",
        query_hash=query_hash,
        data_version=data_version,
        mechanism=Mechanism.DISCRETE_GAUSSIAN,
        charge=Charge(rho=rho),
        now=now,
    )


def _rows(engine: Engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Every ledger entry and lock row, to show that a refusal wrote nothing."""
    with engine.connect() as conn:
        entries = [tuple(r) for r in conn.execute(select(LedgerEntry.__table__).order_by("id"))]
        locks = [tuple(r) for r in conn.execute(select(BudgetLock.scope).order_by("scope"))]
    return entries, locks


def _stored_units(engine: Engine, requester: str | None = None) -> int:
    query = select(func.coalesce(func.sum(LedgerEntry.rho_units), 0))
    if requester is not None:
        query = query.where(LedgerEntry.requester == requester)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


# --- arithmetic ----------------------------------------------------------------------------


def test_units_round_charges_up_and_caps_down() -> None:
    """Charges never under-count and caps never over-state, at 1e-12 rho resolution."""
    assert rho_to_units(0.25) == 250_000_000_000
    assert rho_to_units(1e-13) == 1
    # What OpenDP's map returns for a requested 0.03: a hair above, so one unit more.
    assert rho_to_units(0.030000000000000002) == 30_000_000_001
    # The float 0.1 is slightly above one tenth: the charge rounds up, the cap down.
    assert rho_to_units(0.1) == 100_000_000_001
    assert cap_to_units(0.1) == 100_000_000_000
    assert rho_to_units(0.09999999999999999) == 100_000_000_000
    assert units_to_text(250_000_000_000) == "0.25"
    assert units_to_text(1_000_000_000_001) == "1.000000000001"
    assert units_to_text(0) == "0"
    for bad in (math.nan, math.inf, -0.1):
        with pytest.raises(ValueError, match="finite"):
            rho_to_units(bad)


def test_charges_add_up_exactly_and_caps_are_inclusive(engine: Engine) -> None:
    """Charges summing exactly to the cap are accepted; one unit more is refused."""
    ledger = Ledger(engine, _policy())
    for i, rho in enumerate((0.25, 0.125, 0.125, 0.5)):
        _reserve(ledger, f"r{i}", rho)
    status = ledger.status("board", NOW)
    assert status.requester_rho_spent == 1.0
    assert status.requester_rho_remaining == 0.0
    assert status.node_rho_remaining == 0.25  # what is left of the board's share
    assert _stored_units(engine) == 1_000_000_000_000
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "one-unit-more", 1e-12)
    assert info.value.details == {
        "scope": "requester",
        "remaining_rho": "0",
        "requested_rho": "0.000000000001",
        "period": "2026-Q4",
        "cohort": "0000-00",  # charged to every cohort: the earliest one binds first
    }


def test_status_tracks_remaining_with_rounded_up_units(engine: Engine) -> None:
    """Status reports what was charged (rounded up) and what remains on both caps."""
    ledger = Ledger(engine, _policy())
    _reserve(ledger, "a", 0.25)
    _reserve(ledger, "b", 0.030000000000000002)
    status = ledger.status("board", NOW)
    spent_units = 250_000_000_000 + 30_000_000_001
    assert _stored_units(engine) == spent_units
    assert status.period == "2026-Q4"
    assert status.requester_rho_cap == 1.0
    assert status.requester_rho_spent == units_to_rho(spent_units)
    assert status.requester_rho_remaining == units_to_rho(10**12 - spent_units)
    assert status.node_rho_cap == 1.25  # the board's share of the node's 1.5
    assert status.node_rho_remaining == units_to_rho(1_250_000_000_000 - spent_units)
    assert status.max_rho_per_request == 0.5
    other = ledger.status("other", NOW)
    assert other.requester_rho_spent == 0.0
    assert other.requester_rho_remaining == 1.0
    # The board's spending does not show in what `other` is told about the node.
    assert (other.node_rho_cap, other.node_rho_remaining) == (0.25, 0.25)


def test_per_request_maximum(engine: Engine) -> None:
    """A request may cost exactly the maximum, not one unit more, and a refusal writes nothing."""
    ledger = Ledger(engine, _policy())
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "big", 0.5 + 1e-12)
    assert info.value.details["scope"] == "request"
    assert info.value.details["remaining_rho"] == "0.5"
    assert _rows(engine) == ([], [])
    _reserve(ledger, "max", 0.5)
    assert _stored_units(engine) == 500_000_000_000


def test_requester_cap_and_share_of_the_node_cap(engine: Engine) -> None:
    """Each requester has its own cap per period and its own share of the node's cap."""
    ledger = Ledger(engine, _policy({"board": 1.0, "other": 1.0}, node_total=1.5))
    _reserve(ledger, "b1", 0.5)
    _reserve(ledger, "b2", 0.25)
    # Equal shares of 0.75: the board's share binds before its cap per period.
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "b3", 0.125)
    assert info.value.details["scope"] == "share"
    assert info.value.details["remaining_rho"] == "0"
    # `other` is untouched by the board's spending: its whole share is there.
    assert ledger.status("other", NOW).node_rho_remaining == 0.75
    _reserve(ledger, "o1", 0.5, requester="other")
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "o2", 0.5, requester="other")
    assert info.value.details["scope"] == "share"
    assert info.value.details["remaining_rho"] == "0.25"
    _reserve(ledger, "o3", 0.25, requester="other")
    assert _stored_units(engine) == 1_500_000_000_000


def test_node_cap_still_binds_when_a_policy_change_over_commits_shares(engine: Engine) -> None:
    """Shares changed after spending can promise more than the node has: the node cap wins."""
    before = Ledger(engine, _policy(shares={"board": 1.0, "other": 0.5}))
    _reserve(before, "b1", 0.5)
    _reserve(before, "b2", 0.5)
    after = Ledger(engine, _policy(shares={"board": 0.5, "other": 1.0}))
    status = after.status("other", NOW)
    assert (status.node_rho_cap, status.node_rho_remaining) == (1.0, 0.5)
    _reserve(after, "o1", 0.25, requester="other")
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(after, "o2", 0.5, requester="other")
    assert info.value.details["scope"] == "node"
    assert info.value.details["remaining_rho"] == "0.25"


def test_refusal_writes_nothing(engine: Engine) -> None:
    """After a refused reservation every ledger and lock row is exactly as before."""
    ledger = Ledger(engine, _policy({"board": 0.5, "other": 1.0}, node_total=1.5))
    _reserve(ledger, "a", 0.5)
    before = _rows(engine)
    with pytest.raises(BudgetExhaustedError):
        _reserve(ledger, "b", 0.125)
    assert _rows(engine) == before
    # A first-ever request of a requester that is refused leaves no lock row behind either.
    ledger2 = Ledger(engine, _policy({"board": 0.5, "other": 0.0625}, node_total=1.5))
    with pytest.raises(BudgetExhaustedError):
        _reserve(ledger2, "c", 0.125, requester="other")
    assert _rows(engine) == before


def test_duplicate_request_id(engine: Engine) -> None:
    """A second reservation with the same request id raises and charges nothing."""
    ledger = Ledger(engine, _policy())
    entry_id = _reserve(ledger, "same", 0.25)
    before = _rows(engine)
    with pytest.raises(DuplicateRequestError):
        _reserve(ledger, "same", 0.25)
    assert _rows(engine) == before
    found = ledger.find_by_request_id("same", requester="board")
    assert found is not None
    assert found.id == entry_id
    assert found.rho == 0.25


def test_request_ids_are_per_requester(engine: Engine) -> None:
    """Another requester's use of an id neither blocks nor reveals this requester's."""
    ledger = Ledger(engine, _policy())
    squatted = _reserve(ledger, "same", 0.125, requester="other", query_hash="q-other")
    ledger.complete(squatted, '{"answer": "other"}')
    assert ledger.find_by_request_id("same", requester="board") is None
    assert ledger.find_released("q-other", "v1", requester="board") is None
    mine = _reserve(ledger, "same", 0.25, requester="board")
    assert mine != squatted
    assert ledger.find_by_request_id("same", requester="board").id == mine
    assert ledger.find_by_request_id("same", requester="other").id == squatted


def test_invalid_reservations_are_refused(engine: Engine) -> None:
    """Unknown requesters, bad request ids and non-positive charges write nothing."""
    ledger = Ledger(engine, _policy())
    with pytest.raises(RequesterNotAllowedError):
        _reserve(ledger, "x", 0.1, requester="stranger")
    with pytest.raises(RequesterNotAllowedError):
        ledger.status("stranger", NOW)
    with pytest.raises(InvalidParametersError):
        _reserve(ledger, "", 0.1)
    with pytest.raises(InvalidParametersError):
        _reserve(ledger, "r" * 129, 0.1)
    for bad in (0.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite rho > 0"):
            _reserve(ledger, "y", bad)
    assert _rows(engine) == ([], [])


def test_period_rollover_renews_requester_cap_not_node_cap(engine: Engine) -> None:
    """A new quarter gives the requester a fresh cap; its share of the node cap keeps counting."""
    ledger = Ledger(engine, _policy())
    _reserve(ledger, "q4-a", 0.5)
    _reserve(ledger, "q4-b", 0.5)
    with pytest.raises(BudgetExhaustedError):
        _reserve(ledger, "q4-c", 0.125)
    next_quarter = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    status = ledger.status("board", next_quarter)
    assert status.period == "2027-Q1"
    assert status.requester_rho_spent == 0.0
    assert status.requester_rho_remaining == 1.0
    assert status.node_rho_remaining == 0.25
    _reserve(ledger, "q1-a", 0.25, now=next_quarter)
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "q1-b", 0.125, now=next_quarter)
    assert info.value.details["scope"] == "share"
    assert info.value.details["period"] == "2027-Q1"
    assert ledger.spent_by_requester(next_quarter) == {"board": 0.25, "other": 0.0}
    assert ledger.spent_by_requester(NOW) == {"board": 1.0, "other": 0.0}


# --- entry life cycle ----------------------------------------------------------------------


def test_complete_stores_the_answer_for_replay(engine: Engine) -> None:
    """A completed entry is released with its answer and found by request id and query."""
    ledger = Ledger(engine, _policy())
    first = _reserve(ledger, "r1", 0.125, query_hash="qh", data_version="v1")
    assert ledger.find_released("qh", "v1", requester="board") is None  # reserved is not released
    ledger.complete(first, '{"answer": 1}')
    second = _reserve(ledger, "r2", 0.125, query_hash="qh", data_version="v1")
    ledger.complete(second, '{"answer": 2}')

    stored = ledger.find_by_request_id("r1", requester="board")
    assert stored is not None
    assert (stored.state, stored.answer_json, stored.requester) == (
        "released",
        '{"answer": 1}',
        "board",
    )
    assert (stored.query_hash, stored.data_version, stored.epsilon) == ("qh", "v1", None)
    newest = ledger.find_released("qh", "v1", requester="board")
    assert newest is not None
    assert newest.id == second
    assert newest.answer_json == '{"answer": 2}'
    assert (
        ledger.find_released("qh", "v2", requester="board") is None
    )  # a new data version re-opens the question
    assert ledger.find_released("other", "v1", requester="board") is None
    assert ledger.find_by_request_id("nope", requester="board") is None
    assert ledger.status("board", NOW).requester_rho_spent == 0.25
    with pytest.raises(LedgerStateError, match="released"):
        ledger.complete(first, "{}")


def test_fail_keeps_the_charge(engine: Engine) -> None:
    """A failed delivery after noise was drawn still counts against both caps."""
    ledger = Ledger(engine, _policy())
    entry = _reserve(ledger, "r1", 0.5)
    ledger.fail(entry)
    stored = ledger.find_by_request_id("r1", requester="board")
    assert stored is not None
    assert stored.state == "failed"
    assert stored.answer_json is None
    assert ledger.status("board", NOW).requester_rho_spent == 0.5
    assert ledger.status("board", NOW).node_rho_remaining == 0.75
    with pytest.raises(LedgerStateError, match="failed"):
        ledger.cancel(entry)
    with pytest.raises(DuplicateRequestError):
        _reserve(ledger, "r1", 0.125)


def test_cancel_refunds_and_frees_the_request_id(engine: Engine) -> None:
    """Cancelling a reservation removes it: the budget returns and the id can be used again."""
    ledger = Ledger(engine, _policy())
    entry = _reserve(ledger, "r1", 0.5)
    ledger.cancel(entry)
    assert ledger.find_by_request_id("r1", requester="board") is None
    assert ledger.status("board", NOW).requester_rho_spent == 0.0
    assert _stored_units(engine) == 0
    again = _reserve(ledger, "r1", 0.5)
    ledger.complete(again, "{}")
    with pytest.raises(LedgerStateError, match="released"):
        ledger.cancel(again)
    with pytest.raises(LedgerStateError, match="does not exist"):
        ledger.fail(again + 1000)


def test_epsilon_and_delta_are_recorded(engine: Engine) -> None:
    """A pure-DP request keeps its epsilon beside the rho it was charged."""
    ledger = Ledger(engine, _policy())
    ledger.reserve(
        request_id="lap",
        requester="board",
        template="appeal_outcomes",
        template_version="1",
        query_hash="q",
        data_version="v1",
        mechanism=Mechanism.DISCRETE_LAPLACE,
        charge=Charge(rho=0.125, epsilon=0.5),
        now=NOW,
    )
    stored = ledger.find_by_request_id("lap", requester="board")
    assert stored is not None
    assert stored.epsilon == 0.5
    assert stored.rho == 0.125
    with engine.connect() as conn:
        mechanism = conn.execute(select(LedgerEntry.mechanism)).scalar_one()
    assert mechanism == "discrete_laplace"


# --- cohorts (parallel composition) ---------------------------------------------------------

JAN, FEB, MAR = ("2027-01", "2027-01"), ("2027-02", "2027-02"), ("2027-03", "2027-03")


def _brute_force_spent(engine: Engine, cohort: str, requester: str | None = None) -> int:
    """Units charged to `cohort`: every entry one of whose ranges contains it, summed."""
    e, r = LedgerEntry.__table__, LedgerCohortRange.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(e.c.id, e.c.requester, e.c.rho_units, r.c.first, r.c.last).join(
                r, r.c.entry_id == e.c.id
            )
        ).all()
    hit: dict[int, int] = {}
    for entry_id, who, units, first, last in rows:
        if first <= cohort <= last and (requester is None or who == requester):
            hit[entry_id] = units
    return sum(hit.values())


def test_caps_hold_per_cohort_and_a_restricted_charge_touches_no_other_cohort(
    engine: Engine,
) -> None:
    """The node cap (1.0) holds for each cohort: cohort-restricted charges add up per cohort,
    a charge over all cohorts counts in each, and a refusal names the cohort that binds."""
    ledger = Ledger(
        engine, _policy({"board": 10.0}, node_total=1.0, per_request=1.0, shares={"board": 1.0})
    )
    _reserve(ledger, "jan", 0.75, cohorts=(JAN,))
    _reserve(ledger, "feb", 0.5, cohorts=(FEB,))
    # Two non-adjacent cohorts in one charge: February is not charged.
    _reserve(ledger, "jan-mar", 0.25, cohorts=(JAN, MAR))
    spent = ledger.spent_by_cohort(["2026-12", "2027-01", "2027-02", "2027-03", "2027-04"])
    assert spent == {
        "2026-12": 0.0,
        "2027-01": 1.0,
        "2027-02": 0.5,
        "2027-03": 0.25,
        "2027-04": 0.0,
    }
    for cohort in spent:
        assert _brute_force_spent(engine, cohort) == rho_to_units(spent[cohort])
    # Far more than 1.0 was charged in total, yet every cohort is within its cap.
    assert _stored_units(engine) == rho_to_units(1.5)
    # January is full: anything reading it is refused, naming January.
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "jan-feb", 1e-12, cohorts=(("2027-01", "2027-02"),))
    assert info.value.details["cohort"] == "2027-01"
    assert "cohort 2027-01" in str(info.value)
    # A charge over every cohort counts in each, so it meets January's cap too.
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "all", 0.25)
    assert info.value.details["cohort"] == "2027-01"
    # February and later still have room; what remains is the binding cohort's.
    status = ledger.status("board", NOW, (("2027-02", "2027-04"),))
    assert (status.cohort, status.node_rho_remaining) == ("2027-02", 0.5)
    assert ledger.status("board", NOW).cohort == "2027-01"
    assert ledger.status("board", NOW).node_rho_remaining == 0.0
    _reserve(ledger, "feb-apr", 0.5, cohorts=(("2027-02", "2027-04"),))
    assert ledger.spent_by_cohort(["2027-02", "2027-04"]) == {"2027-02": 1.0, "2027-04": 0.5}


def test_requester_caps_hold_per_cohort(engine: Engine) -> None:
    """A requester may spend its per-period cap and its share on each cohort."""
    ledger = Ledger(
        engine, _policy({"board": 0.5}, node_total=2.0, per_request=0.5, shares={"board": 1.0})
    )
    _reserve(ledger, "jan", 0.5, cohorts=(JAN,))
    _reserve(ledger, "feb", 0.5, cohorts=(FEB,))
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "jan-again", 0.25, cohorts=(JAN,))
    assert (info.value.details["scope"], info.value.details["cohort"]) == ("requester", "2027-01")
    later = NOW + dt.timedelta(days=92)  # next quarter: the period cap renews, per cohort
    _reserve(ledger, "jan-q2", 0.5, cohorts=(JAN,), now=later)
    with pytest.raises(BudgetExhaustedError) as info:
        _reserve(ledger, "jan-q2-more", 0.25, cohorts=(JAN,), now=later)
    assert (info.value.details["scope"], info.value.details["cohort"]) == ("share", "2027-01")
    # March has spent nothing: the whole period cap is there.
    assert ledger.status("board", later, (MAR,)).requester_rho_remaining == 0.5


def test_bad_cohort_ranges_are_refused_before_anything_is_written(engine: Engine) -> None:
    """Overlapping, reversed or empty cohort ranges are a caller bug: nothing is charged."""
    ledger = Ledger(engine, _policy())
    before = _rows(engine)
    for bad in ((), (("2027-02", "2027-01"),), (("2027-01", "2027-03"), FEB)):
        with pytest.raises(ValueError, match="cohort range"):
            _reserve(ledger, "bad", 0.125, cohorts=bad)
    assert _rows(engine) == before


def test_cancel_removes_the_cohort_charges_too(engine: Engine) -> None:
    """A refunded reservation leaves no cohort range behind (and no spending)."""
    ledger = Ledger(engine, _policy())
    entry = _reserve(ledger, "x", 0.125, cohorts=(JAN, MAR))
    ledger.cancel(entry)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(LedgerCohortRange)).scalar_one() == 0
    assert ledger.spent_by_cohort(["2027-01", "2027-03"]) == {"2027-01": 0.0, "2027-03": 0.0}


def test_race_for_overlapping_cohort_sets(engine: Engine) -> None:
    """16 threads charge [Jan, Feb] or [Feb, Mar] at once; February (in both) fits exactly k.

    Exactly k win whatever the interleaving, and by brute force over the entries no
    cohort is charged past its cap."""
    charge = 0.0625
    for k in (3, 7):
        engine_policy = _policy(
            {"board": 10.0}, node_total=k * charge, per_request=charge, shares={"board": k * charge}
        )
        ledger = Ledger(engine, engine_policy)
        barrier = threading.Barrier(THREADS)
        sets = ((("2027-01", "2027-02"),), (("2027-02", "2027-03"),))

        def attempt(
            i: int,
            k: int = k,
            ledger: Ledger = ledger,
            barrier: threading.Barrier = barrier,
            sets: tuple[tuple[tuple[str, str], ...], ...] = sets,
        ) -> object:
            barrier.wait()
            try:
                return _reserve(ledger, f"k{k}-{i}", charge, cohorts=sets[i % 2])
            except BudgetExhaustedError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            outcomes = list(pool.map(attempt, range(THREADS)))
        wins = [o for o in outcomes if isinstance(o, int)]
        refusals = [o for o in outcomes if isinstance(o, BudgetExhaustedError)]
        assert len(wins) == k
        assert len(refusals) == THREADS - k
        assert _brute_force_spent(engine, "2027-02") == k * rho_to_units(charge)
        # Each refusal names the first cohort of its set that is spent to the cap: February,
        # unless every winner charged [Jan, Feb] (then January ties with it and comes first).
        full = {
            c
            for c in ("2027-01", "2027-02", "2027-03")
            if _brute_force_spent(engine, c) == k * rho_to_units(charge)
        }
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, BudgetExhaustedError):
                first, last = sets[i % 2][0]
                binding = min(c for c in full if first <= c <= last)
                assert outcome.details["cohort"] == binding, (i, outcome.details)
        for cohort in ("2027-01", "2027-02", "2027-03"):
            assert _brute_force_spent(engine, cohort) <= cap_to_units(k * charge)
        with engine.begin() as conn:  # a fresh ledger for the next round
            conn.execute(LedgerCohortRange.__table__.delete())
            conn.execute(LedgerEntry.__table__.delete())


def test_spent_per_cohort_stays_fast_with_years_of_monthly_entries(engine: Engine) -> None:
    """Ten years of monthly runs (3,600 entries over 120 cohorts): a charge still checks
    every cap in well under a second, because sums are grouped by range in SQL."""
    import time

    e, r = LedgerEntry.__table__, LedgerCohortRange.__table__
    months = [f"{2027 + m // 12}-{m % 12 + 1:02d}" for m in range(120)]
    entries, ranges = [], []
    for i in range(3600):
        month = months[i // 30]
        entries.append(
            {
                "request_id": f"h{i}",
                "requester": "board",
                "period": f"{month[:4]}-Q1",
                "template": "certificates_issued",
                "template_version": "1",
                "query_hash": f"{i:064x}",
                "data_version": "v1",
                "mechanism": "discrete_gaussian",
                "rho_units": 1_000_000,
                "epsilon": None,
                "delta": 0.0,
                "state": "released",
                "answer": None,
                "created_at": NOW,
                "data_key": None,
            }
        )
        # Most runs ask about the newest cohort; every tenth reads all cohorts so far.
        ranges.append((f"h{i}", EARLIEST if i % 10 == 0 else month, month))
    with engine.begin() as conn:
        conn.execute(e.insert(), entries)
        ids = dict(conn.execute(select(e.c.request_id, e.c.id)).all())
        conn.execute(
            r.insert(),
            [{"entry_id": ids[rid], "first": a, "last": b} for rid, a, b in ranges],
        )
    ledger = Ledger(
        engine, _policy({"board": 10.0}, node_total=10.0, per_request=0.5, shares={"board": 10.0})
    )
    started = time.perf_counter()
    for n in range(10):
        _reserve(ledger, f"new{n}", 0.001, cohorts=((EARLIEST, months[-1]),))
    elapsed = (time.perf_counter() - started) / 10
    assert elapsed < 0.5, f"a charge took {elapsed:.3f} s"
    assert _brute_force_spent(engine, months[0]) == rho_to_units(0.001) * 10 + 1_000_000 * (
        30 + sum(1 for i in range(30, 3600) if i % 10 == 0)
    )


def test_reading_only_the_overlapping_ranges_finds_the_same_peaks(engine: Engine) -> None:
    """The cap check reads only the charged ranges that overlap the question's cohorts; on a
    random ledger (two requesters, two periods, ranges of every kind) each scope's peak and
    its cohort are those over every charged range, for random questions."""
    import random

    rng = random.Random(7)
    months = [f"{2027 + m // 12}-{m % 12 + 1:02d}" for m in range(36)]
    e, r = LedgerEntry.__table__, LedgerCohortRange.__table__
    with engine.begin() as conn:
        for i in range(300):
            a, b = sorted(rng.sample(range(len(months)), 2))
            kind = rng.random()
            if kind < 0.1:
                spans = [(EARLIEST, "9999-99")]
            elif kind < 0.3:
                spans = [(EARLIEST, months[b])]
            elif kind < 0.5:
                c = rng.randrange(b, len(months))
                spans = [(months[a], months[a])] + ([(months[c], months[c])] if c > a else [])
            else:
                spans = [(months[a], months[b])]
            (entry_id,) = conn.execute(
                e.insert().values(
                    request_id=f"r{i}",
                    requester=rng.choice(["board", "other"]),
                    period=rng.choice(["2027-Q1", "2027-Q2"]),
                    template="certificates_issued",
                    template_version="1",
                    query_hash=f"{i:064x}",
                    data_version="v1",
                    mechanism="discrete_gaussian",
                    rho_units=rng.randrange(1, 10**6),
                    epsilon=None,
                    delta=0.0,
                    state=rng.choice(["released", "reserved", "failed"]),
                    answer=None,
                    created_at=NOW,
                    data_key=None,
                )
            ).inserted_primary_key
            conn.execute(
                r.insert(), [{"entry_id": entry_id, "first": x, "last": y} for x, y in spans]
            )
    questions = [ALL, ((EARLIEST, months[-1]),), ((months[0], months[0]),)]
    for _ in range(40):
        a, b = sorted(rng.sample(range(len(months)), 2))
        questions.append(((months[a], months[b]),))
        questions.append(((EARLIEST, months[a]), (months[b], "9999-99")))
    with engine.connect() as conn:
        every = Ledger._scope_ranges(conn, "board", "2027-Q1", ALL)
        for question in questions:
            some = Ledger._scope_ranges(conn, "board", "2027-Q1", question)
            for all_rows, read_rows in zip(every, some, strict=True):
                assert peak(read_rows, question) == peak(all_rows, question), question
                assert len(read_rows) <= len(all_rows)


# --- concurrency ---------------------------------------------------------------------------


def _race(ledger: Ledger, jobs: list[tuple[str, str, float]]) -> list[object]:
    """Run reservations (request_id, requester, rho) at once, one thread each; outcomes in order."""
    barrier = threading.Barrier(len(jobs))

    def attempt(job: tuple[str, str, float]) -> object:
        request_id, requester, rho = job
        barrier.wait()
        try:
            return _reserve(ledger, request_id, rho, requester=requester)
        except (BudgetExhaustedError, DuplicateRequestError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(attempt, jobs))


def test_race_for_the_last_requester_budget(engine: Engine) -> None:
    """16 threads race for a requester cap that fits exactly k of them: exactly k win."""
    charge = 0.0625
    rounds = (1, 7, 15)
    requesters = {f"racer{k}": k * charge for k in rounds}
    ledger = Ledger(engine, _policy(requesters, node_total=100.0, per_request=0.5))
    for k in rounds:
        requester = f"racer{k}"
        outcomes = _race(ledger, [(f"{requester}-{i}", requester, charge) for i in range(THREADS)])
        wins = [o for o in outcomes if isinstance(o, int)]
        refusals = [o for o in outcomes if isinstance(o, BudgetExhaustedError)]
        assert len(wins) == k
        assert len(refusals) == THREADS - k
        assert all(r.details["scope"] == "requester" for r in refusals)
        assert len(set(wins)) == k
        assert _stored_units(engine, requester) == k * rho_to_units(charge)
        assert _stored_units(engine, requester) <= cap_to_units(requesters[requester])


def test_race_for_shares_of_the_node_budget(engine: Engine) -> None:
    """Two requesters racing for the last of the node cap each get exactly their share."""
    charge = 0.0625
    spent = {"board": 0, "other": 0}
    for round_no, (board_fits, other_fits) in enumerate(((2, 1), (5, 3), (1, 1))):
        spent["board"] += board_fits
        spent["other"] += other_fits
        shares = {name: count * charge for name, count in spent.items()}
        ledger = Ledger(
            engine,
            _policy(
                {"board": 10.0, "other": 10.0},
                node_total=sum(shares.values()),
                per_request=charge,
                shares=shares,
            ),
        )
        jobs = [(f"n{round_no}-{i}", "board" if i % 2 else "other", charge) for i in range(THREADS)]
        outcomes = _race(ledger, jobs)
        wins = [o for o in outcomes if isinstance(o, int)]
        refusals = [o for o in outcomes if isinstance(o, BudgetExhaustedError)]
        assert len(wins) == board_fits + other_fits
        assert len(refusals) == THREADS - len(wins)
        assert {r.details["scope"] for r in refusals} == {"share"}
        for name in ("board", "other"):
            assert _stored_units(engine, name) == cap_to_units(shares[name])
        assert _stored_units(engine) == cap_to_units(sum(shares.values()))


def test_race_with_one_request_id(engine: Engine) -> None:
    """16 threads reserving under the same request id produce exactly one reservation."""
    ledger = Ledger(engine, _policy())
    for round_no in range(3):
        request_id = f"same-{round_no}"
        outcomes = _race(ledger, [(request_id, "board", 0.0625)] * THREADS)
        wins = [o for o in outcomes if isinstance(o, int)]
        duplicates = [o for o in outcomes if isinstance(o, DuplicateRequestError)]
        assert len(wins) == 1
        assert len(duplicates) == THREADS - 1
        with engine.connect() as conn:
            count = conn.execute(
                select(func.count()).where(LedgerEntry.request_id == request_id)
            ).scalar_one()
        assert count == 1
    assert _stored_units(engine) == 3 * rho_to_units(0.0625)


def _process_worker(db_url: str, worker: int, attempts: int, start: object, out: object) -> None:
    """In a separate process: wait for the others, then try `attempts` reservations."""
    engine = make_engine(db_url)
    policy = _policy(
        {"board": 10.0, "other": 10.0},
        node_total=0.3125,
        per_request=0.0625,
        shares={"board": 0.1875, "other": 0.125},
    )
    ledger = Ledger(engine, policy)
    start.wait()  # type: ignore[attr-defined]
    wins = 0
    for i in range(attempts):
        try:
            _reserve(ledger, f"p{worker}-{i}", 0.0625, requester="board" if worker % 2 else "other")
            wins += 1
        except BudgetExhaustedError:
            pass
    engine.dispose()
    out.put(wins)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_race_across_processes(engine: Engine, db_url: str) -> None:
    """Four node processes sharing one database never spend past the shares (3 + 2 charges)."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    out = context.Queue()
    workers = [
        context.Process(target=_process_worker, args=(db_url, w, 4, start, out)) for w in range(4)
    ]
    for process in workers:
        process.start()
    wins = [out.get(timeout=60) for _ in workers]
    for process in workers:
        process.join(timeout=10)
        assert process.exitcode == 0
    assert sum(wins) == 5
    assert _stored_units(engine, "board") == cap_to_units(0.1875)
    assert _stored_units(engine, "other") == cap_to_units(0.125)


def test_peak_agrees_with_brute_force_on_random_ranges() -> None:
    """The sweep in `cohorts.peak` equals the maximum of per-cohort sums computed one by one."""
    import random

    from fedaudit.node.privacy import cohorts

    rng = random.Random(13)
    months = cohorts.months("2026-01", "2027-12")
    for _ in range(300):
        rows = []
        for _ in range(rng.randrange(0, 12)):
            a, b = sorted(rng.sample(months, 2))
            rows.append(
                (rng.choice([a, EARLIEST]), rng.choice([b, "9999-99"]), rng.randrange(1, 9))
            )
        lo, hi = sorted(rng.sample(months, 2))
        picked = ((lo, hi),) if rng.random() < 0.5 else ((EARLIEST, lo), (hi, hi))
        candidates = [c for c in (EARLIEST, *months) if any(a <= c <= b for a, b in picked)]
        sums = [sum(u for a, b, u in rows if a <= c <= b) for c in candidates]
        best = max(sums)
        got, where = cohorts.peak(rows, picked)
        assert got == best
        assert sum(u for a, b, u in rows if a <= where <= b) == best
