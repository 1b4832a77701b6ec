"""The node's side of a blinding-ring run: consent, rows, and one blinding per batch.

A run has five steps, each a method here and an RPC in `fedaudit.node.ring.server`:

1. `join`: the node must hold its federation certificate (a node serving with
   --insecure has none and never joins), the policy must allow the requester the
   `dedup_ring` template, the run must charge at least the policy's `ring.min_rho` and
   fit the budget: the ledger is charged before any data are read (the coordinator's
   releases are what the persons of this registry pay for). The node draws fresh
   per-run keys (scalar, box key, hop-signing key) and signs their public halves with
   its X.509 node key. The answer depends on no data: Join reveals no count.
2. `start`: given the roster, the node checks it before reading or blinding anything:
   every member proves with its federation node certificate that it is the node the
   entry names (`fedaudit.pki.identity`), members are distinct, this node is in it,
   the policy's minimum number of municipalities and allowed peers hold. Only then
   does it read its registry, build and hash its rows, blind its own batch and return
   it sealed to the next node. From here on the charge stands.
3. `hop`: a batch sealed to this node arrives; it must follow the signed schedule
   (this node is exactly `hop` places after the origin, the sender the one before),
   and each (run, origin) is processed at most once, so a coordinator cannot use a
   node as an exponentiation oracle for guessed names. The last hop seals the fully
   blinded batch to the run's tally node (a member fixed by the roster digest).
4. `tally` (the tally node only): every fully blinded batch, each checked against the
   schedule and its last sender's signature; the node counts them (union-find,
   `fedaudit.common.ring_counting`) and answers only the noisy releases, drawn for the
   rho every member charged at Join, once per run. The coordinator never sees a
   final token, so the equality pattern stays inside a node (docs/dedup.md).
5. `finish`: the secrets are wiped; the ledger entry is settled: refunded only when
   the node never read its registry for the run (the roster never came or was
   refused), kept otherwise, whatever the coordinator says. Runs never finished expire.

Every call (join, start, each hop, finish), answered or refused, is a link in the
node's query log (`fedaudit.node.evidence.querylog`) with what it charged.

Nothing personal is logged: log lines carry the run, counts and municipality codes.
The values exchanged (parameters, roster, batch parts) are shared with the coordinator
and live in `fedaudit.common.ring_protocol`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace

import structlog
from sqlalchemy import Engine, select

from fedaudit.common import ring_crypto as rc
from fedaudit.common.budget_units import rho_to_units
from fedaudit.common.ring_counting import count_rows
from fedaudit.common.ring_protocol import (
    ALL_KEYS,
    BatchHeader,
    BatchPart,
    BatchTrailer,
    JoinInfo,
    LabelledRow,
    RingParams,
    RosterEntry,
    TallyResult,
    roster_digest,
    tally_position,
)
from fedaudit.common.ring_releases import noisy_releases
from fedaudit.node.domain import Charge, Mechanism
from fedaudit.node.errors import (
    DataUnavailableError,
    InvalidParametersError,
    RefusedError,
    RequesterNotAllowedError,
    RingUnavailableError,
    TemplateNotAllowedError,
)
from fedaudit.node.evidence import querylog
from fedaudit.node.evidence.querylog import LogEvent, QueryLog
from fedaudit.node.privacy.cohorts import CohortRange
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.ring.keys import (
    PersonInput,
    merge_local,
)
from fedaudit.node.ring.padding import Cell, PaddingPlan, cells, dummy_rows, plan_padding
from fedaudit.node.ring.roster import check_roster
from fedaudit.node.ring.rows import hashed_rows, load_persons
from fedaudit.node.store.models import (
    DataVersion,
    Municipality,
    Qualification,
)
from fedaudit.pki.enrolment import RevocationList
from fedaudit.pki.identity import NodeIdentity

log = structlog.get_logger(__name__)

TEMPLATE = "dedup_ring"
TEMPLATE_VERSION = "1"
DEFAULT_BOUND = 2
"""Rows per person and kind when the policy names no bound for `dedup_ring`."""
MAX_KEYS = len(ALL_KEYS)
RUN_TTL_SECONDS = 3600.0
"""A run not finished within this time is dropped with its secrets."""
MAX_ROW_BYTES = 8 + 32 * (MAX_KEYS + 14)
PACE_MS_PER_ROW = 0.25
PACE_MS_PER_TOKEN = 0.05
"""Start's floor per padded row and token: about 3.5x and 1.7x the registry read and merge
(0.07 ms per row) and the hashing or dummy drawing (0.03 ms per token) measured on a
loaded 2-core machine with SQLite (docs/dedup.md)."""
MAX_DUMMY_ROWS = 2_000_000
"""A run whose DP padding could add more dummy rows than this is refused before any read."""


class RingProtocolError(InvalidParametersError):
    """A ring message off the schedule, repeated, unauthenticated or malformed."""


@dataclass
class _Run:
    requester: str
    params: RingParams
    bound: int
    municipality: str
    data_version: str
    keys: rc.RunKeys
    entry_id: int
    created: float
    padding_entry_id: int | None = None
    """The ledger entry of the DP dummy padding (None: the policy turned padding off)."""
    roster: tuple[RosterEntry, ...] = ()
    roster_digest: bytes = b""
    started: bool = False
    """Set just before the registry is read: from then on the charge stands."""
    processed: set[str] = field(default_factory=set)
    tallied: bool = False
    """Set when this node (the run's tally node) began counting: once per run."""


def request_id_for_run(run_id: str) -> str:
    return "dedup-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


def padding_request_id(run_id: str) -> str:
    """The ledger entry of a run's DP dummy padding (beside the run's own entry)."""
    return request_id_for_run(run_id) + "-padding"


class DedupService:
    """One node's part in blinding-ring runs. Thread-safe; runs are independent."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        *,
        ledger: Ledger | None = None,
        identity: NodeIdentity | None = None,
        query_log: QueryLog | None = None,
        revocations: Callable[[], RevocationList | None] | None = None,
        pool: Executor | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        run_ttl: float = RUN_TTL_SECONDS,
    ) -> None:
        """`identity` is the node's federation certificate and key (with the CA it
        trusts, `fedaudit.pki.identity`): without it the node refuses every ring (RING_UNAVAILABLE), because it
        could neither prove its own membership nor check anyone else's. `revocations`
        returns the federation CRL in force (None when it cannot be trusted): rosters
        with a revoked member are refused, and every roster while the CRL is unusable."""
        self._engine = engine
        self._policy = policy
        self._ledger = ledger or Ledger(engine, policy)
        self._identity = identity
        self._revocations = revocations
        self._log = query_log or QueryLog(engine, clock=clock)
        self._pool = pool
        self._clock = clock
        self._ttl = run_ttl
        self._runs: dict[tuple[str, str], _Run] = {}  # (requester, run id)
        self._lock = threading.Lock()
        self.blinded_points = 0
        """Scalar multiplications done so far (for benchmarks and metrics)."""

    # --- 1. join ----------------------------------------------------------------------------

    def join(self, requester: str, run_id: str, params: RingParams) -> JoinInfo:
        """Consent (policy, minimum and budget, charged now) and certified per-run keys."""
        event = self._event(requester, "ring_join", run_id, _params_text(run_id, params))
        with self._logged(event):
            return self._join(requester, run_id, params, event)

    def _join(self, requester: str, run_id: str, params: RingParams, event: LogEvent) -> JoinInfo:
        self._expire()
        credential = self._identity
        if credential is None:
            raise RingUnavailableError(
                "this node has no federation certificate (it serves without TLS, --insecure), "
                "so it can neither prove its ring membership nor check its peers'; the "
                "blinding ring needs a node served with mTLS"
            )
        self._check_allowed(requester)
        self._check_params(run_id, params)
        minimum = self._policy.ring.min_rho
        if params.rho < minimum:
            raise InvalidParametersError(
                f"a ring run must charge at least {minimum:g} rho at this node "
                f"(policy ring.min_rho); this one asks {params.rho:g}",
                {"field": "rho", "min_rho": f"{minimum:g}"},
            )
        bound = min(params.bound, self._policy.bounds.get(TEMPLATE, DEFAULT_BOUND))
        request_id = request_id_for_run(run_id)
        with self._lock:
            if (requester, run_id) in self._runs:
                raise RingProtocolError("this run has already been joined at this node")
        if self._ledger.find_by_request_id(request_id, requester=requester) is not None:
            raise RingProtocolError("this run already took place at this node; runs are once only")
        municipality, version = self._municipality_and_version()
        if municipality != credential.name:
            raise RingUnavailableError(
                f"this node's federation certificate names {credential.name!r} but its data "
                f"are for municipality {municipality!r}; issue the node certificate for "
                "the municipality code"
            )
        mechanism = Mechanism.DISCRETE_LAPLACE if params.epsilon else Mechanism.DISCRETE_GAUSSIAN
        query_hash = hashlib.sha256(
            json.dumps([run_id, list(params.keys), bound, params.shopping, params.revoked]).encode()
        ).hexdigest()
        event.data_version = version
        cohorts = self._ledger.existing_cohorts(self._clock())
        entry_id = self._ledger.reserve(
            request_id=request_id,
            requester=requester,
            template=TEMPLATE,
            template_version=TEMPLATE_VERSION,
            query_hash=query_hash,
            data_version=version,
            mechanism=mechanism,
            charge=Charge(rho=params.rho, epsilon=params.epsilon),
            now=self._clock(),
            # The ring reads every person here: charged to every cohort that has any.
            cohorts=cohorts,
        )
        padding_id = self._reserve_padding(
            requester, run_id, query_hash, version, entry_id, cohorts
        )
        event.rho_units, event.epsilon = rho_to_units(params.rho), params.epsilon
        if padding_id is not None:
            event.rho_units += rho_to_units(self._padding_rho())
        try:
            keys = rc.RunKeys.fresh()
            signing_public = bytes(keys.signing.verify_key)
            box_public = bytes(keys.box.public_key)
            info = JoinInfo(
                municipality_code=municipality,
                signing_key=signing_public,
                box_key=box_public,
                box_key_signature=rc.sign(
                    keys.signing, rc.box_key_statement(run_id, municipality, box_public)
                ),
                certificate=credential.certificate_pem,
                membership_signature=credential.sign(
                    rc.membership_statement(
                        run_id, municipality, signing_public, box_public, params.digest()
                    )
                ),
            )
        except Exception:
            self._cancel(entry_id, padding_id)  # nothing was read; no run to settle later
            event.rho_units = 0
            raise
        with self._lock:
            if (requester, run_id) in self._runs:  # a concurrent join of the same run won the race
                keys.wipe()
                self._cancel(entry_id, padding_id)
                event.rho_units = 0
                raise RingProtocolError("this run has already been joined at this node")
            self._runs[(requester, run_id)] = _Run(
                requester=requester,
                params=params,
                bound=bound,
                municipality=municipality,
                data_version=version,
                keys=keys,
                entry_id=entry_id,
                created=time.monotonic(),
                padding_entry_id=padding_id,
            )
        log.info("dedup.joined", run_id=run_id, bound=bound, keys=len(params.keys))
        return info

    # --- 2. start ---------------------------------------------------------------------------

    def start(self, requester: str, run_id: str, roster: Sequence[RosterEntry]) -> list[BatchPart]:
        """Check the roster, then read, hash and blind this node's own batch for the next node."""
        roster = tuple(roster)
        codes = [e.municipality_code for e in roster]
        event = self._event(
            requester, "ring_start", run_id, json.dumps({"run": run_id, "roster": codes})
        )
        with self._logged(event):
            return self._start(requester, run_id, roster, event)

    def _start(
        self, requester: str, run_id: str, roster: tuple[RosterEntry, ...], event: LogEvent
    ) -> list[BatchPart]:
        run = self._run(requester, run_id)
        event.data_version = run.data_version
        assert self._identity is not None  # a run exists only when join had one
        me = check_roster(
            run_id,
            roster,
            self._identity,
            self._policy.ring,
            own_signing_key=bytes(run.keys.signing.verify_key),
            own_box_key=bytes(run.keys.box.public_key),
            params_digest=run.params.digest(),
            now=self._clock(),
            revocations=self._revocations,
        )
        padding = self._padding(run, len(roster))  # before the registry: may still refuse
        with self._lock:
            if run.started:
                raise RingProtocolError("this node's batch was already sent in this run")
            run.started = True  # the registry is read next: the charge stands from here
            run.roster, run.roster_digest = roster, roster_digest(run_id, roster)
        began = time.monotonic()
        rows = self._own_rows(run_id, run)
        if padding is not None:
            rows += dummy_rows(*padding)
        self._pace(run_id, began, rows)
        rows = rc.blind_rows(bytes(run.keys.scalar), rows, self._pool)  # shuffles
        self.blinded_points += sum(len(r.tokens) for r in rows)
        origin = roster[me].municipality_code
        log.info("dedup.started", run_id=run_id, nodes=len(roster))
        return self._emit(run_id, run, origin, 1, rows)

    def _pace(self, run_id: str, began: float, rows: Sequence[rc.Row]) -> None:
        """Hold the batch until a floor that depends on the padded batch alone.

        Reading and merging the registry takes time in proportion to the registry's
        size, which the padding does not hide; hashing real tokens and drawing dummy
        ones together follow the padded token count. Waiting until a floor computed
        from the padded rows and tokens (`PACE_MS_PER_ROW`, `PACE_MS_PER_TOKEN`, times
        the policy's `ring.pace_factor`) makes the time from roster to batch a function
        of the padded batch whenever the work fits under the floor; when it does not,
        the node logs it so the operator can raise the factor.
        """
        factor = self._policy.ring.pace_factor
        if factor <= 0:
            return
        tokens = sum(len(r.tokens) for r in rows)
        floor = factor * (PACE_MS_PER_ROW * len(rows) + PACE_MS_PER_TOKEN * tokens) / 1000.0
        spent = time.monotonic() - began
        if spent > floor:
            log.warning(
                "dedup.pace_overrun",
                run_id=run_id,
                spent_seconds=round(spent, 3),
                floor_seconds=round(floor, 3),
            )
            return
        time.sleep(floor - spent)

    # --- 3. hop -----------------------------------------------------------------------------

    def hop(self, requester: str, parts: Iterable[BatchPart]) -> list[BatchPart]:
        """Blind and shuffle a batch sealed to this node; return it for the next hop."""
        stream = iter(parts)
        header = next(stream, None)
        run_id = header.run_id if isinstance(header, BatchHeader) else ""
        text = (
            json.dumps({"run": run_id, "origin": header.origin, "hop": header.hop})
            if isinstance(header, BatchHeader)
            else ""
        )
        event = self._event(requester, "ring_hop", run_id, text)
        with self._logged(event):
            return self._hop(requester, header, stream, event)

    def _hop(
        self,
        requester: str,
        header: BatchPart | None,
        stream: Iterator[BatchPart],
        event: LogEvent,
    ) -> list[BatchPart]:
        if not isinstance(header, BatchHeader):
            raise RingProtocolError("a batch must begin with its header")
        run = self._run(requester, header.run_id)
        event.data_version = run.data_version
        if not run.started:
            raise RingProtocolError("the roster has not been given to this node yet")
        roster = run.roster
        n = len(roster)
        codes = [e.municipality_code for e in roster]
        if header.origin not in codes or not 1 <= header.hop < n:
            raise RingProtocolError("batch origin or hop is not in this run's schedule")
        origin_at = codes.index(header.origin)
        me = self._position(run)
        if (origin_at + header.hop) % n != me:
            raise RingProtocolError("this batch is not scheduled for this node at this hop")
        sender = roster[(origin_at + header.hop - 1) % n]
        if header.sender != sender.municipality_code:
            raise RingProtocolError("the batch does not come from the scheduled sender")
        with self._lock:
            if header.origin in run.processed:
                raise RingProtocolError("this node has already blinded this origin's batch")
            run.processed.add(header.origin)  # before any work: exactly once, even on failure
        rows = self._open_batch(run, header, stream, sender)
        if next(stream, None) is not None:
            raise RingProtocolError("a batch must end with exactly one trailer")
        try:
            rows = rc.blind_rows(bytes(run.keys.scalar), rows, self._pool)
        except rc.RingCryptoError as exc:
            raise RingProtocolError(str(exc)) from exc
        self.blinded_points += sum(len(r.tokens) for r in rows)
        log.info("dedup.hop", run_id=header.run_id, origin=header.origin, hop=header.hop)
        return self._emit(header.run_id, run, header.origin, header.hop + 1, rows)

    # --- 4. tally (the run's tally node only) ------------------------------------------------

    def tally(self, requester: str, parts: Iterable[BatchPart]) -> TallyResult:
        """Count every fully blinded batch of the run and release noisy counts, once per run."""
        stream = iter(parts)
        first = next(stream, None)
        run_id = first.run_id if isinstance(first, BatchHeader) else ""
        event = self._event(requester, "ring_tally", run_id, json.dumps({"run": run_id}))
        with self._logged(event):
            return self._tally(requester, first, stream, event)

    def _tally(
        self,
        requester: str,
        first: BatchPart | None,
        stream: Iterator[BatchPart],
        event: LogEvent,
    ) -> TallyResult:
        if not isinstance(first, BatchHeader):
            raise RingProtocolError("a tally must begin with a batch header")
        run_id = first.run_id
        run = self._run(requester, run_id)
        event.data_version = run.data_version
        if not run.started:
            raise RingProtocolError("the roster has not been given to this node yet")
        roster = run.roster
        n = len(roster)
        codes = [e.municipality_code for e in roster]
        if tally_position(run.roster_digest, n) != self._position(run):
            raise RingProtocolError("this node is not the tally node of this run")
        with self._lock:
            if run.tallied:
                raise RingProtocolError("this run was already tallied; a run is counted once")
            run.tallied = True  # before any work: one noisy draw per run, even on failure
        rows: list[LabelledRow] = []
        header: BatchPart | None = first
        seen: list[str] = []
        while header is not None:
            if (
                not isinstance(header, BatchHeader)
                or header.run_id != run_id
                or header.origin not in codes
                or header.hop != n
            ):
                raise RingProtocolError("a tallied batch must be fully blinded, of this run")
            if header.origin in seen:
                raise RingProtocolError(f"the batch of {header.origin} came twice")
            sender = roster[(codes.index(header.origin) + n - 1) % n]
            if header.sender != sender.municipality_code:
                raise RingProtocolError("the batch does not come from the scheduled sender")
            seen.append(header.origin)
            batch = self._open_batch(run, header, stream, sender)
            rows.extend(LabelledRow(header.origin, r) for r in batch)
            header = next(stream, None)
        missing = sorted(set(codes) - set(seen))
        if missing:
            raise RingProtocolError(f"the tally lacks the batches of {', '.join(missing)}")
        counts = count_rows(rows, codes, len(run.params.keys))
        result = TallyResult(
            municipality_code=run.municipality,
            occupations=counts.occupations,
            releases=noisy_releases(counts, run.params, codes),
        )
        signature = rc.sign(run.keys.signing, result.statement(run_id, run.roster_digest))
        event.message = f"tallied the batches of {n} municipalities; noisy counts only"
        log.info("dedup.tallied", run_id=run_id, nodes=n)
        return replace(result, signature=signature)

    def _open_batch(
        self, run: _Run, header: BatchHeader, stream: Iterator[BatchPart], sender: RosterEntry
    ) -> list[rc.Row]:
        """Read one batch sealed to this node up to its trailer; check digest and signature."""
        limit = header.rows * MAX_ROW_BYTES
        pieces: list[bytes] = []
        size = 0
        trailer: BatchTrailer | None = None
        for part in stream:
            if isinstance(part, BatchTrailer):
                trailer = part
                break
            if not isinstance(part, bytes):
                raise RingProtocolError("a batch has one header")
            try:
                piece = rc.unseal(run.keys.box, part)
            except rc.RingCryptoError as exc:
                raise RingProtocolError(str(exc)) from exc
            size += len(piece)
            if size > limit:
                raise RingProtocolError("the batch is larger than its row count allows")
            pieces.append(piece)
        if trailer is None:
            raise RingProtocolError("a batch must end with exactly one trailer")
        digest = rc.digest_of(pieces)
        if digest != trailer.digest:
            raise RingProtocolError("the batch digest does not match its content")
        statement = rc.hop_statement(
            header.run_id,
            run.roster_digest,
            origin=header.origin,
            hop=header.hop,
            rows=header.rows,
            digest=digest,
        )
        try:
            rc.verify(sender.signing_key, statement, trailer.signature)
            return rc.decode_rows(b"".join(pieces), header.rows)
        except rc.RingCryptoError as exc:
            raise RingProtocolError(str(exc)) from exc

    # --- 5. finish --------------------------------------------------------------------------

    def finish(self, requester: str, run_id: str, completed: bool) -> bool:
        """Wipe the run's secrets and settle the charge. False when no such run is held."""
        event = self._event(
            requester, "ring_finish", run_id, json.dumps({"run": run_id, "completed": completed})
        )
        with self._logged(event):
            with self._lock:
                run = self._runs.get((requester, run_id))
                if run is None or run.requester != requester:
                    event.message = "no such run held"
                    return False
                del self._runs[(requester, run_id)]
            event.data_version = run.data_version
            self._settle(run, completed, event)
            log.info("dedup.finished", run_id=run_id, completed=completed)
            return True

    def active_runs(self) -> int:
        self._expire()
        with self._lock:
            return len(self._runs)

    # --- internals --------------------------------------------------------------------------

    def _settle(self, run: _Run, completed: bool, event: LogEvent) -> None:
        """Refund only when the registry was never read for this run; otherwise keep it."""
        run.keys.wipe()
        if not run.started:
            self._cancel(run.entry_id, run.padding_entry_id)  # the registry was never read
            event.message = "refunded: the registry was never read for this run"
        else:
            entries = [run.entry_id]
            rho = run.params.rho
            if run.padding_entry_id is not None:
                entries.append(run.padding_entry_id)
                rho += self._padding_rho()
            for entry in entries:
                if completed:
                    self._ledger.complete(entry, json.dumps({"processed": len(run.processed)}))
                else:
                    self._ledger.fail(entry)
            event.rho_units, event.epsilon = rho_to_units(rho), run.params.epsilon
            event.message = "charge kept" + ("" if completed else " (run not completed)")

    def _padding_rho(self) -> float:
        rho = self._policy.ring.padding_rho
        assert rho is not None
        return rho

    def _reserve_padding(  # noqa: PLR0917 (the run's charge, passed through)
        self,
        requester: str,
        run_id: str,
        query_hash: str,
        version: str,
        entry_id: int,
        cohorts: Sequence[CohortRange],
    ) -> int | None:
        """Charge the DP dummy padding (a separate ledger entry); None when the policy has none.

        Reserved at Join with the run's own charge, to the same cohorts (both protect the
        same persons), so both are in place before anything is read or blinded; if it does
        not fit, the run's charge is cancelled too.
        """
        rho = self._policy.ring.padding_rho
        if rho is None:
            return None
        try:
            return self._ledger.reserve(
                request_id=padding_request_id(run_id),
                requester=requester,
                template=TEMPLATE,
                template_version=TEMPLATE_VERSION,
                query_hash=query_hash,
                data_version=version,
                mechanism=Mechanism.DISCRETE_GAUSSIAN,
                charge=Charge(rho=rho, delta=self._policy.ring.padding_delta),
                now=self._clock(),
                cohorts=cohorts,
            )
        except Exception:
            self._ledger.cancel(entry_id)
            raise

    def _cancel(self, entry_id: int, padding_id: int | None) -> None:
        self._ledger.cancel(entry_id)
        if padding_id is not None:
            self._ledger.cancel(padding_id)

    def _padding(self, run: _Run, nodes: int) -> tuple[PaddingPlan, list[Cell]] | None:
        """The padding plan and grid of this run (None: padding off), from the policy, the
        roster size and the catalogue (reference data) only. Refused before the registry is
        read when it would add more than MAX_DUMMY_ROWS rows (the policy's padding_rho is
        too small for this roster), so the charge is still refunded."""
        if run.padding_entry_id is None:
            return None
        rho, delta = self._padding_rho(), self._policy.ring.padding_delta
        params = run.params
        grid = cells(
            self._catalogue(), len(params.keys), shopping=params.shopping, revoked=params.revoked
        )
        try:
            plan = plan_padding(rho, delta, nodes=nodes, bound=params.bound, revoked=params.revoked)
        except ValueError as exc:
            raise InvalidParametersError(
                f"this node's padding (ring.padding_rho={rho:g}) cannot serve this run: {exc}; "
                "raise ring.padding_rho",
                {"field": "ring.padding_rho"},
            ) from exc
        if plan.upper * len(grid) > MAX_DUMMY_ROWS:
            raise InvalidParametersError(
                f"this node's padding (ring.padding_rho={rho:g}, padding_delta={delta:g}) would "
                f"add up to {plan.upper * len(grid)} dummy rows for {nodes} nodes and "
                f"{len(grid)} cells, more than {MAX_DUMMY_ROWS}; raise ring.padding_rho or "
                "lower the run's bound",
                {"field": "ring.padding_rho"},
            )
        return plan, grid

    def _catalogue(self) -> list[str]:
        """The ISCO codes of the node's qualifications: reference data, not personal."""
        try:
            with self._engine.connect() as conn:
                return sorted(set(conn.execute(select(Qualification.isco_code)).scalars()))
        except Exception as exc:
            raise DataUnavailableError("the node's database is not reachable") from exc

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [k for k, r in self._runs.items() if now - r.created > self._ttl]
            expired = [self._runs.pop(k) for k in old]
        for run_id, run in zip(old, expired, strict=True):
            event = self._event(run.requester, "ring_finish", run_id, json.dumps({"run": run_id}))
            with self._logged(event):
                self._settle(run, False, event)
                event.message = "expired; " + event.message
            log.info("dedup.expired")

    def _emit(
        self, run_id: str, run: _Run, origin: str, hop: int, rows: list[rc.Row]
    ) -> list[BatchPart]:
        roster = run.roster
        n = len(roster)
        me = self._position(run)
        plain = rc.split_payload(rc.encode_rows(rows))
        digest = rc.digest_of(plain)
        # The last hop: fully blinded tokens, for the tally node's eyes only.
        to = (me + 1) % n if hop < n else tally_position(run.roster_digest, n)
        recipient = roster[to].box_key
        chunks: list[BatchPart] = [rc.seal(recipient, p) for p in plain]
        signature = rc.sign(
            run.keys.signing,
            rc.hop_statement(
                run_id, run.roster_digest, origin=origin, hop=hop, rows=len(rows), digest=digest
            ),
        )
        sender = roster[me].municipality_code
        return [
            BatchHeader(run_id=run_id, origin=origin, hop=hop, rows=len(rows), sender=sender),
            *chunks,
            BatchTrailer(digest=digest, signature=signature),
        ]

    @staticmethod
    def _position(run: _Run) -> int:
        mine = bytes(run.keys.signing.verify_key)
        for i, e in enumerate(run.roster):
            if e.signing_key == mine:
                return i
        raise RingProtocolError("this node is not in the roster")

    def _run(self, requester: str, run_id: str) -> _Run:
        self._expire()
        with self._lock:
            run = self._runs.get((requester, run_id))
        if run is None or run.requester != requester:
            raise RingProtocolError("no such run at this node (never joined, finished or expired)")
        return run

    def _check_allowed(self, requester: str) -> None:
        if requester not in self._policy.requesters:
            raise RequesterNotAllowedError(f"requester {requester!r} is not in the node policy")
        if not self._policy.allows(requester, TEMPLATE):
            raise TemplateNotAllowedError(
                f"the node policy does not allow {TEMPLATE!r} for requester {requester!r}"
            )

    @staticmethod
    def _check_params(run_id: str, params: RingParams) -> None:
        if not run_id or len(run_id) > 128:
            raise InvalidParametersError("run id must have 1 to 128 characters")
        keys = params.keys
        if not keys or len(set(keys)) != len(keys) or any(k not in ALL_KEYS for k in keys):
            raise InvalidParametersError(
                f"keys must be distinct names from {', '.join(ALL_KEYS)}", {"field": "keys"}
            )
        if not 1 <= params.bound <= 100:
            raise InvalidParametersError("bound must be from 1 to 100", {"field": "bound"})
        # The tally node draws the releases' noise from these: what is charged must be what
        # is released (a Laplace run releases epsilon, which costs epsilon^2/2 in rho).
        if not math.isfinite(params.rho) or params.rho <= 0:
            raise InvalidParametersError(
                f"rho must be a finite number > 0, got {params.rho!r}", {"field": "rho"}
            )
        epsilon = params.epsilon
        if epsilon is not None and (
            not math.isfinite(epsilon)
            or epsilon <= 0
            or not math.isclose(params.rho, epsilon * epsilon / 2, rel_tol=1e-9)
        ):
            raise InvalidParametersError(
                f"epsilon {epsilon!r} must be a finite number > 0 with rho = epsilon^2/2 "
                f"(the charge of the pure-DP releases); rho is {params.rho!r}",
                {"field": "epsilon"},
            )

    def _event(self, requester: str, method: str, run_id: str, parameters: str) -> LogEvent:
        return LogEvent(
            requester=requester,
            method=method,
            request_id=request_id_for_run(run_id) if run_id else "",
            template=TEMPLATE,
            template_version=TEMPLATE_VERSION,
            parameters=parameters,
        )

    @contextlib.contextmanager
    def _logged(self, event: LogEvent) -> Iterator[None]:
        """Append `event` to the query log whatever happens: answered, refused or failed."""
        try:
            yield
        except RefusedError as exc:
            event.status, event.reason, event.message = (
                querylog.REFUSED,
                exc.reason.value,
                exc.message,
            )
            self._append(event)
            raise
        except Exception:
            event.status, event.reason = querylog.FAILED, querylog.INTERNAL
            self._append(event)
            raise
        self._append(event)

    def _append(self, event: LogEvent) -> None:
        try:
            self._log.append(event)
        except Exception as exc:  # the log must not turn a refusal into a crash
            log.error("dedup.querylog_failed", method=event.method, error=type(exc).__name__)
            raise

    def _municipality_and_version(self) -> tuple[str, str]:
        """The municipality code and data version (no personal data)."""
        try:
            with self._engine.connect() as conn:
                muni = conn.execute(select(Municipality.municipality_code)).scalar_one_or_none()
                version = conn.execute(
                    select(DataVersion.version).order_by(DataVersion.id.desc()).limit(1)
                ).scalar_one_or_none()
        except Exception as exc:
            raise DataUnavailableError("the node's database is not reachable") from exc
        if muni is None or version is None:
            raise DataUnavailableError("no data bundle has been imported into this node yet")
        return muni, version

    def _own_rows(self, run_id: str, run: _Run) -> list[rc.Row]:
        """This node's rows for the run, hashed to the group (read only after the roster check)."""
        _, _, persons = self._load()
        people, certs = merge_local(
            persons,
            run.params.keys,
            run.municipality,
            bound=run.bound,
            shopping=run.params.shopping,
            revoked=run.params.revoked,
        )
        return hashed_rows(run_id, people, certs)

    def _load(self) -> tuple[str, str, list[PersonInput]]:
        try:
            return load_persons(self._engine)
        except RefusedError:
            raise
        except Exception as exc:
            raise DataUnavailableError("the node's database is not reachable") from exc


def _params_text(run_id: str, params: RingParams) -> str:
    """The run's parameters as the query log records them."""
    return json.dumps(
        {
            "run": run_id,
            "keys": list(params.keys),
            "bound": params.bound,
            "shopping": params.shopping,
            "revoked": params.revoked,
            "rho": params.rho,
            "epsilon": params.epsilon,
        },
        sort_keys=True,
    )
