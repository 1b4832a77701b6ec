"""The node's query handling: policy, catalogue, ledger and noise, with no transport in sight.

The order of steps in `NodeService.query` is the node's privacy contract:
validate everything from public information first (so a bad request costs
nothing), replay stored answers (so retries and repeats cost nothing and averaging
gains nothing), charge the ledger, and only then touch the data and draw noise.

Request ids and stored answers belong to the requester that sent them (its mTLS
identity): a requester replays only its own answers, and preflight tells it only
about its own history, so one requester can neither squat another's request ids
nor learn what another asked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import structlog
from sqlalchemy import Connection, Engine, func, select

from fedaudit.common import mechanisms
from fedaudit.common.budget_units import rho_to_units
from fedaudit.common.digest import answer_digest, log_head_statement
from fedaudit.node.domain import (
    Answer,
    Capabilities,
    Cell,
    Charge,
    LogHead,
    Mechanism,
    NoiseSpec,
    Preflight,
    QuerySpec,
    TemplateInfo,
    answer_from_json,
    answer_to_json,
)
from fedaudit.node.errors import (
    BudgetExhaustedError,
    DataUnavailableError,
    InvalidParametersError,
    RateLimitedError,
    RefusedError,
    RequesterNotAllowedError,
    TemplateNotAllowedError,
)
from fedaudit.node.evidence import querylog
from fedaudit.node.evidence.querylog import LogEvent, QueryLog
from fedaudit.node.privacy.cohorts import CohortRange, month_of
from fedaudit.node.privacy.ledger import DuplicateRequestError, Ledger
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.query import canonical, catalogue
from fedaudit.node.store.db import is_sqlite
from fedaudit.node.store.models import CohortDigest, DataVersion, Municipality
from fedaudit.pki.identity import NodeIdentity

log = structlog.get_logger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class _DataState:
    """What the node knows about its current data version (cached per version)."""

    version: str
    version_id: int
    reference_date: dt.date
    municipality_code: str
    municipality_name: str
    country: str
    keys: dict[str, tuple[str, ...]]
    imports: tuple[tuple[int, str, frozenset[str]], ...]
    """Every import: (sequence, reference month, cohorts it reopened); public."""
    reference_digest: str


class NodeService:
    """Answers capability, preflight and query requests for one municipality's database."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        *,
        query_engine: Engine | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        identity: NodeIdentity | None = None,
    ) -> None:
        self._engine = engine
        # Aggregations may run through a read-only role (production: a PostgreSQL user with
        # SELECT only); the ledger always writes through `engine`.
        self._query_engine = query_engine or engine
        self._policy = policy
        self._clock = clock
        # Signs the log heads answers and refusals carry (none in --insecure mode).
        self._identity = identity
        self._ledger = Ledger(engine, policy)
        self._query_log = QueryLog(engine, clock=clock)
        self._state: _DataState | None = None
        self._state_lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def engine(self) -> Engine:
        """The writer engine (ledger, query log); other node services share it."""
        return self._engine

    @property
    def clock(self) -> Callable[[], dt.datetime]:
        """The clock budgets are periodised by (injected in tests to compress time)."""
        return self._clock

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def query_log(self) -> QueryLog:
        return self._query_log

    # --- public operations -------------------------------------------------------------

    def capabilities(self, requester: str) -> Capabilities:
        with self._logged(LogEvent(requester=requester, method="capabilities")) as event:
            return self._capabilities(requester, event)
        raise AssertionError("unreachable")  # pragma: no cover - _logged re-raises

    def preflight(self, requester: str, spec: QuerySpec, request_id: str = "") -> Preflight:
        """Cost and accuracy from public parameters; a refusal is reported, not raised.

        With the request id it would be sent under, the preflight also says whether the
        query would replay a stored answer (and so cost nothing): a coordinator re-running
        a crashed audit must not skip a node for lack of budget it no longer needs.
        """
        event = _event(requester, "preflight", spec, request_id=request_id)
        with self._logged(event):
            return self._preflight(requester, spec, event, request_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def query(self, requester: str, request_id: str, spec: QuerySpec) -> Answer:
        """Release a DP answer, charging the ledger first; see the module docstring.

        Every outcome is appended to the query log; an answer is returned only once its
        log row is written (a failed append fails the call, and a retry replays for free).
        """
        event = _event(requester, "query", spec, request_id=request_id)
        with self._logged(event):
            answer = self._query(requester, request_id, spec, event)
        if event.head is None:  # pragma: no cover - every path above logs or raises
            raise AssertionError("a query answered without a log row")
        return dataclasses.replace(answer, log_head=self._signed_head(*event.head))

    def _capabilities(self, requester: str, event: LogEvent) -> Capabilities:
        self._check_requester(requester)
        state = self._data_state()
        event.data_version = state.version
        templates = []
        for template in catalogue.TEMPLATES.values():
            if not self._policy.allows(requester, template.name):
                continue
            defaults = {p.name: p.default for p in template.params}
            templates.append(
                TemplateInfo(
                    name=template.name,
                    version=template.version,
                    description=template.description,
                    dimensions=tuple(template.dimensions),
                    categories=tuple(template.categories(defaults)),
                    params=tuple(
                        (p.name, p.description, p.minimum, p.maximum, p.default)
                        for p in template.params
                    ),
                    max_records_per_person=self._policy.bound(template.name),
                )
            )
        return Capabilities(
            municipality_code=state.municipality_code,
            municipality_name=state.municipality_name,
            country=state.country,
            catalogue_version=catalogue.CATALOGUE_VERSION,
            data_version=state.version,
            dimensions=state.keys,
            dimension_descriptions={
                name: info.description for name, info in catalogue.DIMENSIONS.items()
            },
            templates=tuple(templates),
            mechanisms=(Mechanism.DISCRETE_GAUSSIAN, Mechanism.DISCRETE_LAPLACE),
            budget=self._ledger.status(requester, self._clock()),
            suppression_threshold=self._policy.suppress_below,
            requester=requester,
        )

    def _preflight(
        self, requester: str, spec: QuerySpec, event: LogEvent, request_id: str = ""
    ) -> Preflight:
        self._check_requester(requester)
        state = self._data_state()
        event.data_version = state.version
        template, params = self._validate(requester, spec, state)
        event.template_version = template.version
        canon = canonical.canonical_spec(template, spec, state.keys, params)
        noise, charge = mechanisms.plan_noise(
            canon.mechanism,
            rho=canon.rho,
            epsilon=canon.epsilon,
            sensitivity=self._policy.bound(template.name),
            confidence=spec.confidence,
        )
        self._check_minimum(charge)
        ranges = catalogue.charged_cohorts(canon, state.keys)
        # What remains for the cohorts this query would be charged (the binding one).
        budget = self._ledger.status(requester, self._clock(), ranges)
        replay = self._would_replay(
            requester,
            request_id,
            _hashes(spec, canon),
            _data_key(template, ranges, state, self._policy),
        )
        if replay:
            charge = Charge(rho=0.0)
        reason, message = "", ""
        limit = min(
            budget.requester_rho_remaining, budget.node_rho_remaining, budget.max_rho_per_request
        )
        if charge.rho > limit:
            reason = BudgetExhaustedError.reason.value
            message = (
                f"costs rho={charge.rho:.6g} but at most rho={limit:.6g} can be spent "
                f"(requester remaining {budget.requester_rho_remaining:.6g}, node remaining "
                f"{budget.node_rho_remaining:.6g}, per request {budget.max_rho_per_request:.6g})"
            )
            # The preflight itself was answered; the reason records what a query would meet.
            event.reason, event.message = reason, message
        return Preflight(
            template=template.name,
            template_version=template.version,
            noise=noise,
            charge=charge,
            cell_count=catalogue.cell_count(template, spec, state.keys, params),
            budget=budget,
            fits_budget=not reason,
            refusal_reason=reason,
            refusal_message=message,
            replay=replay,
        )

    def _would_replay(
        self, requester: str, request_id: str, hashes: tuple[str, ...], data: tuple[str, str]
    ) -> bool:
        """Whether the query would replay one of the caller's own stored answers.

        Only the caller's history is consulted: another requester's request ids and
        answers are not its business (and are not replayed to it, see `_replay`).
        """
        version, key = data
        entry, released = self._ledger.find_replay(
            request_id, hashes, version, requester=requester, data_key=key
        )
        if entry is not None:
            return entry.query_hash in hashes and entry.state == "released"
        return bool(released)

    def _query(self, requester: str, request_id: str, spec: QuerySpec, event: LogEvent) -> Answer:
        self._check_requester(requester)
        if not _REQUEST_ID.fullmatch(request_id or ""):
            raise InvalidParametersError(
                "request_id must be 1-128 characters of letters, digits and . _ : -"
            )
        state = self._data_state()
        event.data_version = state.version
        template, params = self._validate(requester, spec, state)
        event.template_version = template.version
        canon = canonical.canonical_spec(template, spec, state.keys, params)
        hashes = _hashes(spec, canon)
        query_hash = hashes[0]
        bound = self._policy.bound(template.name)
        noise, charge = mechanisms.plan_noise(
            canon.mechanism,
            rho=canon.rho,
            epsilon=canon.epsilon,
            sensitivity=bound,
            confidence=spec.confidence,
        )
        self._check_minimum(charge)
        ranges = catalogue.charged_cohorts(canon, state.keys)
        data = _data_key(template, ranges, state, self._policy)

        replay = self._replay(requester, request_id, hashes, data)
        if replay is not None:
            return _replayed(
                event,
                canonical.present(replay, spec, state.keys, request_id=request_id, replayed=True),
            )

        now = self._clock()
        try:
            # The charge, the release and the log row are one transaction: a crash or an
            # error anywhere before the commit leaves neither a charge nor a log row (and
            # nothing was released: the answer is returned only after the commit).
            with self._ledger.transaction() as tx:
                entry_id = self._ledger.reserve(
                    request_id=request_id,
                    requester=requester,
                    template=template.name,
                    template_version=template.version,
                    query_hash=query_hash,
                    data_version=state.version,
                    mechanism=spec.mechanism,
                    charge=charge,
                    now=now,
                    outer=tx,
                    cohorts=ranges,
                    data_key=data[1],
                )
                counts = self._true_counts(
                    tx, template=template, canon=canon, state=state, params=params, bound=bound
                )
                self._check_unchanged(tx, state)
                answer = self._noisy_answer(
                    request_id,
                    template=template,
                    canon=canon,
                    state=state,
                    params=params,
                    counts=counts,
                    noise=noise,
                    charge=charge,
                )
                self._ledger.complete(entry_id, answer_to_json(answer), outer=tx)
                answer = canonical.present(
                    answer, spec, state.keys, request_id=request_id, replayed=False
                )
                event.rho_units, event.epsilon = rho_to_units(charge.rho), charge.epsilon
                event.answer_digest = answer_digest(answer)
                row = self._query_log.append(event, outer=tx)
            event.appended, event.head = True, (row.seq, row.row_hash)
        except DuplicateRequestError:
            # A concurrent retry of the same request won the race; answer as a replay.
            replay = self._replay(requester, request_id, hashes, data)
            if replay is None:
                raise RateLimitedError(
                    f"request {request_id} is being answered; retry shortly"
                ) from None
            return _replayed(
                event,
                canonical.present(replay, spec, state.keys, request_id=request_id, replayed=True),
            )
        except Exception as exc:
            # Rolled back: nothing charged, released or logged. `_logged` logs the outcome.
            event.rho_units, event.epsilon, event.answer_digest = 0, None, ""
            if not isinstance(exc, RefusedError) or isinstance(exc, DataUnavailableError):
                event.status = querylog.FAILED
            raise
        log.info(
            "query_answered",
            requester=requester,
            request_id=request_id,
            template=template.name,
            cells=len(answer.cells),
            rho=charge.rho,
            data_version=state.version,
        )
        return answer

    def _true_counts(
        self,
        tx: Connection,
        *,
        template: catalogue.Template,
        canon: QuerySpec,
        state: _DataState,
        params: dict[str, int],
        bound: int,
    ) -> list[tuple[tuple[str, ...], str, int]]:
        """The exact bounded counts, read inside the charging transaction where possible.

        On SQLite (one writer, whose lock the transaction holds) and when queries run
        through the writer engine, on `tx` itself; through a separate read-only engine
        (a PostgreSQL role) on a connection of its own.
        """
        shared = self._query_engine is self._engine or is_sqlite(self._engine)
        try:
            with nullcontext(tx) if shared else self._query_engine.connect() as conn:
                return catalogue.true_counts(
                    conn,
                    template,
                    canon,
                    state.keys,
                    params,
                    max_records_per_person=bound,
                    reference_date=state.reference_date,
                )
        except Exception as exc:
            log.error(
                "query_failed_before_release", template=template.name, error=type(exc).__name__
            )
            raise DataUnavailableError("the node could not compute this query") from exc

    def _check_unchanged(self, tx: Connection, state: _DataState) -> None:
        """Refuse (and roll the charge back) if an import landed while the counts ran.

        The counts could then include persons of a cohort newer than those the query
        was charged for. Read after the counts on the writer's transaction, so any
        import the counts could have seen has committed before this read.
        """
        newest = tx.execute(select(func.max(DataVersion.id))).scalar()
        if newest != state.version_id:
            self.reload()
            raise RateLimitedError(
                "the node's data was replaced while this query ran; nothing was charged; retry"
            )

    def _noisy_answer(
        self,
        request_id: str,
        *,
        template: catalogue.Template,
        canon: QuerySpec,
        state: _DataState,
        params: dict[str, int],
        counts: list[tuple[tuple[str, ...], str, int]],
        noise: NoiseSpec,
        charge: Charge,
    ) -> Answer:
        """Draw the noise and build the answer in its canonical form."""
        noisy = mechanisms.add_noise(noise, [count for _, _, count in counts])
        cells = _suppress(
            [
                (keys, category, value)
                for (keys, category, _), value in zip(counts, noisy, strict=True)
            ],
            self._policy.suppress_below,
        )
        return Answer(
            request_id=request_id,
            template=template.name,
            template_version=template.version,
            catalogue_version=catalogue.CATALOGUE_VERSION,
            data_version=state.version,
            municipality_code=state.municipality_code,
            group_by=canon.group_by,
            categories=tuple(template.categories(params)),
            cells=tuple(cells),
            noise=noise,
            charge=charge,
            suppression_threshold=self._policy.suppress_below,
        )

    def reload(self) -> None:
        """Forget cached data state (after an import into a running node's database)."""
        with self._state_lock:
            self._state = None

    def ready(self) -> bool:
        """True when a data version is loaded and the database answers."""
        try:
            self._data_state()
        except RefusedError:
            return False
        return True

    # --- steps -----------------------------------------------------------------------------

    @contextmanager
    def _logged(self, event: LogEvent) -> Iterator[LogEvent]:
        """Append the request's outcome to the query log, whatever it was.

        A refusal or failure is logged and re-raised, marked so the gRPC boundary does
        not log it again; if that append fails too, the original error still wins.
        """
        try:
            yield event
        except RefusedError as exc:
            if event.status != querylog.FAILED:
                event.status = querylog.REFUSED
            event.reason, event.message = exc.reason.value, exc.message
            self._append_for_error(event, exc)
            raise
        except Exception as exc:
            event.status, event.reason = querylog.FAILED, querylog.INTERNAL
            event.message = f"internal error ({type(exc).__name__})"
            self._append_for_error(event, exc)
            raise
        if not event.appended:  # a query's answer is appended in its charging transaction
            row = self._query_log.append(event)
            event.head = (row.seq, row.row_hash)

    def _append_for_error(self, event: LogEvent, exc: BaseException) -> None:
        try:
            row = self._query_log.append(event)
        except Exception as append_exc:
            log.error(
                "querylog.append_failed", method=event.method, error=type(append_exc).__name__
            )
            return
        querylog.mark_logged(exc)
        if isinstance(exc, RefusedError):
            exc.details.update(querylog.head_details(row))
            signature = self._signed_head(row.seq, row.row_hash).signature
            if signature:
                exc.details["log_signature"] = signature.hex()

    def _signed_head(self, seq: int, row_hash: str) -> LogHead:
        """The log head as this node states it: signed with its federation key if it has one."""
        if self._identity is None:
            return LogHead(seq, row_hash)
        statement = log_head_statement(self._identity.name, seq, row_hash)
        return LogHead(
            seq,
            row_hash,
            signature=self._identity.sign(statement),
            certificate=self._identity.certificate_pem,
        )

    def _check_minimum(self, charge: Charge) -> None:
        """Refuse a near-free query: it could only probe the node (or squat an id) cheaply."""
        least = self._policy.min_rho_per_query
        if charge.rho < least * (1 - 1e-9):
            raise InvalidParametersError(
                f"this query would charge rho={charge.rho:.6g}; this node's policy asks at least "
                f"rho={least:g} per query (budget.min_rho_per_query)",
                {"field": "rho", "minimum_rho": f"{least:g}", "requested_rho": f"{charge.rho:.6g}"},
            )

    def _check_requester(self, requester: str) -> None:
        if requester not in self._policy.requesters:
            raise RequesterNotAllowedError(
                f"requester '{requester[:100]}' is not named in this node's policy"
            )

    def _validate(
        self, requester: str, spec: QuerySpec, state: _DataState
    ) -> tuple[catalogue.Template, dict[str, int]]:
        template, params = catalogue.validate(spec, state.keys)
        if not self._policy.allows(requester, template.name):
            raise TemplateNotAllowedError(
                f"template '{template.name}' is not allowed for requester '{requester}' by this node's policy"
            )
        return template, params

    def _replay(
        self, requester: str, request_id: str, hashes: tuple[str, ...], data: tuple[str, str]
    ) -> Answer | None:
        """The caller's stored answer to this request id or query, as stored, or None."""
        version, key = data
        entry, found = self._ledger.find_replay(
            request_id, hashes, version, requester=requester, data_key=key
        )
        if entry is not None:
            if entry.query_hash not in hashes:
                raise InvalidParametersError(
                    f"request_id {request_id} was already used for a different query"
                )
            if entry.state == "released" and entry.answer_json:
                return answer_from_json(entry.answer_json, request_id=request_id)
            if entry.state == "reserved":
                raise RateLimitedError(f"request {request_id} is being answered; retry shortly")
            raise DataUnavailableError(
                f"request {request_id} failed after its charge; send a new request id"
            )
        for query_hash in hashes:
            same = found.get(query_hash)
            if same is not None and same.answer_json:
                return answer_from_json(same.answer_json, request_id=request_id)
        return None

    def _data_state(self) -> _DataState:
        """The current data version's public state, cached until another import lands.

        Checked on every request (one indexed read): an import into a running node's
        database is picked up at once, so the cohort keys a query is charged for are
        never older than the data it reads (see also `_check_unchanged`).
        """
        with self._state_lock:
            if self._state is not None:
                try:
                    with self._query_engine.connect() as conn:
                        newest = conn.execute(select(func.max(DataVersion.id))).scalar()
                except Exception as exc:
                    raise DataUnavailableError("the node's database is not reachable") from exc
                if newest == self._state.version_id:
                    return self._state
                self._state = None
            try:
                with self._query_engine.connect() as conn:
                    version = conn.execute(
                        select(DataVersion).order_by(DataVersion.id.desc()).limit(1)
                    ).first()
                    muni = conn.execute(select(Municipality)).first()
                    if version is None or muni is None:
                        raise DataUnavailableError(
                            "no data bundle has been imported into this node yet"
                        )
                    keys = catalogue.dimension_keys(
                        conn, self._policy.periods, self._policy.cohort_start
                    )
                    imports = _imports(conn)
                    reference_digest = conn.execute(
                        select(CohortDigest.digest).where(
                            CohortDigest.data_version == version.version,
                            CohortDigest.cohort == "*",
                        )
                    ).scalar_one_or_none()
            except RefusedError:
                raise
            except Exception as exc:
                raise DataUnavailableError("the node's database is not reachable") from exc
            self._state = _DataState(
                version=version.version,
                version_id=version.id,
                reference_date=version.reference_date,
                municipality_code=muni.municipality_code,
                municipality_name=muni.name,
                country=muni.country,
                keys=keys,
                imports=imports,
                reference_digest=reference_digest or "",
            )
            return self._state


def _event(requester: str, method: str, spec: QuerySpec, *, request_id: str = "") -> LogEvent:
    """A log event with what the request named, before anything is validated."""
    return LogEvent(
        requester=requester,
        method=method,
        request_id=request_id,
        template=spec.template,
        parameters=spec.canonical_json(),
    )


def _data_key(
    template: catalogue.Template,
    ranges: tuple[CohortRange, ...],
    state: _DataState,
    policy: Policy,
) -> tuple[str, str]:
    """(data version, replay data key) of a query reading `ranges` (see `canonical.data_key`)."""
    return state.version, canonical.data_key(
        version=state.version,
        ranges=ranges,
        imports=state.imports,
        open_months=policy.cohort_open_months,
        reference_digest=state.reference_digest,
        reference_date=state.reference_date if template.uses_reference_date else None,
    )


def _imports(conn: Connection) -> tuple[tuple[int, str, frozenset[str]], ...]:
    """Every import's sequence number, reference month and reopened cohorts (public)."""
    reopened: dict[str, set[str]] = {}
    for version, cohort in conn.execute(
        select(CohortDigest.data_version, CohortDigest.cohort).where(CohortDigest.reopened)
    ):
        reopened.setdefault(version, set()).add(cohort)
    return tuple(
        (int(seq), month_of(day), frozenset(reopened.get(version, ())))
        for seq, version, day in conn.execute(
            select(DataVersion.id, DataVersion.version, DataVersion.reference_date).order_by(
                DataVersion.id
            )
        )
    )


def _hashes(spec: QuerySpec, canon: QuerySpec) -> tuple[str, ...]:
    """The replay key of the canonical request, then the exact-bytes hash answers stored
    before canonical queries existed were filed under (so they still replay)."""
    return (canonical.replay_key(canon), spec.query_hash())


def _replayed(event: LogEvent, answer: Answer) -> Answer:
    event.status, event.answer_digest = querylog.REPLAYED, answer_digest(answer)
    return answer


def _suppress(cells: list[tuple[tuple[str, ...], str, int]], threshold: int) -> list[Cell]:
    """Withhold groups whose noisy total is below the policy's reliability threshold.

    Decided on noisy values only, so it is post-processing and costs no privacy.
    """
    if threshold <= 0:
        return [Cell(k, c, v) for k, c, v in cells]
    totals: dict[tuple[str, ...], int] = {}
    for keys, _, value in cells:
        totals[keys] = totals.get(keys, 0) + value
    return [
        Cell(k, c, 0, suppressed=True) if totals[k] < threshold else Cell(k, c, v)
        for k, c, v in cells
    ]
