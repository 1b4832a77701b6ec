"""The node's side of a blinding-ring run: consent, rows, and one blinding per batch.

A run has four steps, each a method here and an RPC in `fedaudit.node.ring.server`:

1. `join`: the policy must allow the requester the `dedup_ring` template and the run's
   cost must fit the budget: the ledger is charged before any data are read (the
   coordinator's releases are what the persons of this registry pay for). The node
   builds its rows, hashes them to the group, draws a fresh scalar and box key.
2. `start`: given the roster (ring order, every node's signed per-run box key), the
   node blinds its own batch and returns it sealed to the next node.
3. `hop`: a batch sealed to this node arrives; it must follow the signed schedule
   (this node is exactly `hop` places after the origin, the sender the one before),
   and each (run, origin) is processed at most once, so a coordinator cannot use a
   node as an exponentiation oracle for guessed names.
4. `finish`: the scalar and box key are wiped; the ledger entry is settled (refunded
   when nothing left the node, kept otherwise). Runs that are never finished expire.

Nothing personal is logged: log lines carry the run, counts and municipality codes.
The values exchanged (parameters, roster, batch parts) are shared with the coordinator
and live in `fedaudit.common.ring_protocol`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import structlog
from nacl.signing import SigningKey
from sqlalchemy import Engine, select

from fedaudit.common import ring_crypto as rc
from fedaudit.common.ring_protocol import (
    ALL_KEYS,
    BatchHeader,
    BatchPart,
    BatchTrailer,
    JoinInfo,
    RingParams,
    RosterEntry,
    roster_digest,
)
from fedaudit.node.domain import Charge, Mechanism
from fedaudit.node.errors import (
    DataUnavailableError,
    InvalidParametersError,
    RefusedError,
    RequesterNotAllowedError,
    TemplateNotAllowedError,
)
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.ring.keys import (
    CertRow,
    Identity,
    PersonInput,
    PersonRow,
    cert_string,
    event_string,
    key_string,
    merge_local,
)
from fedaudit.node.store.models import (
    Assessment,
    Candidate,
    Certificate,
    DataVersion,
    Municipality,
    Qualification,
)

log = structlog.get_logger(__name__)

TEMPLATE = "dedup_ring"
TEMPLATE_VERSION = "1"
DEFAULT_BOUND = 2
"""Rows per person and kind when the policy names no bound for `dedup_ring`."""
MAX_KEYS = len(ALL_KEYS)
RUN_TTL_SECONDS = 3600.0
"""A run not finished within this time is dropped with its secrets."""
MAX_ROW_BYTES = 8 + 32 * (MAX_KEYS + 14)


class RingProtocolError(InvalidParametersError):
    """A ring message off the schedule, repeated, unauthenticated or malformed."""


@dataclass
class _Run:
    requester: str
    params: RingParams
    keys: rc.RunKeys
    rows: list[rc.Row]
    entry_id: int
    created: float
    roster: tuple[RosterEntry, ...] = ()
    roster_digest: bytes = b""
    started: bool = False
    processed: set[str] = field(default_factory=set)


def request_id_for_run(run_id: str) -> str:
    return "dedup-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


class DedupService:
    """One node's part in blinding-ring runs. Thread-safe; runs are independent."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        *,
        ledger: Ledger | None = None,
        signing_key: SigningKey | None = None,
        trusted_peers: Mapping[str, bytes] | None = None,
        pool: Executor | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        run_ttl: float = RUN_TTL_SECONDS,
    ) -> None:
        """`signing_key` is the node's long-term identity (generated when absent);
        `trusted_peers` pins the verify keys of the federation's nodes by municipality
        code, so a roster with a substituted key is refused."""
        self._engine = engine
        self._policy = policy
        self._ledger = ledger or Ledger(engine, policy)
        self._signing = signing_key or SigningKey.generate()
        self._trusted = dict(trusted_peers) if trusted_peers is not None else None
        self._pool = pool
        self._clock = clock
        self._ttl = run_ttl
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self.blinded_points = 0
        """Scalar multiplications done so far (for benchmarks and metrics)."""

    @property
    def verify_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    # --- 1. join ----------------------------------------------------------------------------

    def join(self, requester: str, run_id: str, params: RingParams) -> JoinInfo:
        """Consent (policy and budget, charged now), build rows, draw per-run secrets."""
        self._expire()
        self._check_allowed(requester)
        self._check_params(run_id, params)
        bound = min(params.bound, self._policy.bounds.get(TEMPLATE, DEFAULT_BOUND))
        request_id = request_id_for_run(run_id)
        with self._lock:
            if run_id in self._runs:
                raise RingProtocolError("this run has already been joined at this node")
        if self._ledger.find_by_request_id(request_id) is not None:
            raise RingProtocolError("this run already took place at this node; runs are once only")
        municipality, version, persons = self._load()
        mechanism = Mechanism.DISCRETE_LAPLACE if params.epsilon else Mechanism.DISCRETE_GAUSSIAN
        query_hash = hashlib.sha256(
            json.dumps([run_id, list(params.keys), bound, params.shopping, params.revoked]).encode()
        ).hexdigest()
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
        )
        try:
            people, certs = merge_local(
                persons,
                params.keys,
                municipality,
                bound=bound,
                shopping=params.shopping,
                revoked=params.revoked,
            )
            rows = hashed_rows(run_id, people, certs)
            keys = rc.RunKeys.fresh()
        except Exception:
            self._ledger.cancel(entry_id)
            raise
        box_public = bytes(keys.box.public_key)
        info = JoinInfo(
            municipality_code=municipality,
            signing_key=self.verify_key,
            box_key=box_public,
            box_key_signature=rc.sign(
                self._signing, rc.box_key_statement(run_id, municipality, box_public)
            ),
            rows=len(rows),
        )
        with self._lock:
            if run_id in self._runs:  # a concurrent join of the same run won the race
                keys.wipe()
                raise RingProtocolError("this run has already been joined at this node")
            self._runs[run_id] = _Run(
                requester=requester,
                params=params,
                keys=keys,
                rows=rows,
                entry_id=entry_id,
                created=time.monotonic(),
            )
        log.info("dedup.joined", run_id=run_id, rows=len(rows), bound=bound, keys=len(params.keys))
        return info

    # --- 2. start ---------------------------------------------------------------------------

    def start(self, requester: str, run_id: str, roster: Sequence[RosterEntry]) -> list[BatchPart]:
        """Accept the roster and return this node's own batch, blinded once, for the next node."""
        run = self._run(requester, run_id)
        roster = tuple(roster)
        self._check_roster(run_id, roster)
        me = self._position(roster)
        if roster[me].box_key != bytes(run.keys.box.public_key):
            raise RingProtocolError("the roster does not carry this node's box key for the run")
        with self._lock:
            if run.started:
                raise RingProtocolError("this node's batch was already sent in this run")
            run.started = True
            run.roster, run.roster_digest = roster, roster_digest(run_id, roster)
        rows = rc.blind_rows(bytes(run.keys.scalar), run.rows, self._pool)
        run.rows = []  # the hashed rows are no longer needed
        self.blinded_points += sum(len(r.tokens) for r in rows)
        origin = roster[me].municipality_code
        log.info("dedup.started", run_id=run_id, rows=len(rows), nodes=len(roster))
        return self._emit(run_id, run, origin, 1, rows)

    # --- 3. hop -----------------------------------------------------------------------------

    def hop(self, requester: str, parts: Iterable[BatchPart]) -> list[BatchPart]:
        """Blind and shuffle a batch sealed to this node; return it for the next hop."""
        stream = iter(parts)
        header = next(stream, None)
        if not isinstance(header, BatchHeader):
            raise RingProtocolError("a batch must begin with its header")
        run = self._run(requester, header.run_id)
        if not run.started:
            raise RingProtocolError("the roster has not been given to this node yet")
        roster = run.roster
        n = len(roster)
        codes = [e.municipality_code for e in roster]
        if header.origin not in codes or not 1 <= header.hop < n:
            raise RingProtocolError("batch origin or hop is not in this run's schedule")
        origin_at = codes.index(header.origin)
        me = self._position(roster)
        if (origin_at + header.hop) % n != me:
            raise RingProtocolError("this batch is not scheduled for this node at this hop")
        sender = roster[(origin_at + header.hop - 1) % n]
        if header.sender != sender.municipality_code:
            raise RingProtocolError("the batch does not come from the scheduled sender")
        with self._lock:
            if header.origin in run.processed:
                raise RingProtocolError("this node has already blinded this origin's batch")
            run.processed.add(header.origin)  # before any work: exactly once, even on failure
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
        if trailer is None or next(stream, None) is not None:
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
            rows = rc.decode_rows(b"".join(pieces), header.rows)
            rows = rc.blind_rows(bytes(run.keys.scalar), rows, self._pool)
        except rc.RingCryptoError as exc:
            raise RingProtocolError(str(exc)) from exc
        self.blinded_points += sum(len(r.tokens) for r in rows)
        log.info("dedup.hop", run_id=header.run_id, origin=header.origin, hop=header.hop)
        return self._emit(header.run_id, run, header.origin, header.hop + 1, rows)

    # --- 4. finish --------------------------------------------------------------------------

    def finish(self, requester: str, run_id: str, completed: bool) -> bool:
        """Wipe the run's secrets and settle the charge. False when no such run is held."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.requester != requester:
                return False
            del self._runs[run_id]
        self._settle(run, completed)
        log.info("dedup.finished", run_id=run_id, completed=completed)
        return True

    def active_runs(self) -> int:
        self._expire()
        with self._lock:
            return len(self._runs)

    # --- internals --------------------------------------------------------------------------

    def _settle(self, run: _Run, completed: bool) -> None:
        run.keys.wipe()
        run.rows = []
        if not run.started:
            self._ledger.cancel(run.entry_id)  # nothing derived from the data left the node
        elif completed:
            self._ledger.complete(run.entry_id, json.dumps({"processed": len(run.processed)}))
        else:
            self._ledger.fail(run.entry_id)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [k for k, r in self._runs.items() if now - r.created > self._ttl]
            expired = [self._runs.pop(k) for k in old]
        for run in expired:
            self._settle(run, completed=False)
            log.info("dedup.expired")

    def _emit(
        self, run_id: str, run: _Run, origin: str, hop: int, rows: list[rc.Row]
    ) -> list[BatchPart]:
        roster = run.roster
        n = len(roster)
        me = self._position(roster)
        plain = rc.split_payload(rc.encode_rows(rows))
        digest = rc.digest_of(plain)
        if hop < n:
            recipient = roster[(me + 1) % n].box_key
            chunks: list[BatchPart] = [rc.seal(recipient, p) for p in plain]
        else:
            chunks = list(plain)  # the last hop: fully blinded tokens for the coordinator
        signature = rc.sign(
            self._signing,
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

    def _position(self, roster: Sequence[RosterEntry]) -> int:
        mine = self.verify_key
        for i, e in enumerate(roster):
            if e.signing_key == mine:
                return i
        raise RingProtocolError("this node is not in the roster")

    def _run(self, requester: str, run_id: str) -> _Run:
        self._expire()
        with self._lock:
            run = self._runs.get(run_id)
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

    def _check_roster(self, run_id: str, roster: Sequence[RosterEntry]) -> None:
        codes = [e.municipality_code for e in roster]
        if len(roster) < 2 or len(set(codes)) != len(codes):
            raise RingProtocolError("a roster needs at least two distinct municipalities")
        if len({e.signing_key for e in roster}) != len(roster):
            raise RingProtocolError("two roster entries share a signing key")
        for e in roster:
            if (
                self._trusted is not None
                and self._trusted.get(e.municipality_code) != e.signing_key
            ):
                raise RingProtocolError(
                    f"the roster's key for {e.municipality_code} is not the pinned federation key"
                )
            try:
                rc.verify(
                    e.signing_key,
                    rc.box_key_statement(run_id, e.municipality_code, e.box_key),
                    e.box_key_signature,
                )
            except rc.RingCryptoError as exc:
                raise RingProtocolError(
                    f"the box key of {e.municipality_code} is not signed by its node"
                ) from exc

    def _load(self) -> tuple[str, str, list[PersonInput]]:
        try:
            return load_persons(self._engine)
        except RefusedError:
            raise
        except Exception as exc:
            raise DataUnavailableError("the node's database is not reachable") from exc


def hashed_rows(run_id: str, people: Sequence[PersonRow], certs: Sequence[CertRow]) -> list[rc.Row]:
    """Rows of group elements: key strings hashed to the group, undefined slots random."""
    rows: list[rc.Row] = []
    for p in people:
        tokens = [
            rc.hash_to_group(key_string(run_id, name, p.isco_code, value))
            if value is not None
            else rc.random_element()
            for name, value in zip(p.key_names, p.keys, strict=True)
        ]
        flags = rc.FLAG_CERTIFIED if p.certified else 0
        if p.fail_months:
            flags |= rc.FLAG_FAILED
            for month in p.fail_months:
                tokens.append(
                    rc.hash_to_group(event_string(run_id, p.isco_code, p.event_value, month))
                    if p.event_value
                    else rc.random_element()
                )
        if p.pass_month is not None:
            flags |= rc.FLAG_PASSED
            tokens.append(
                rc.hash_to_group(event_string(run_id, p.isco_code, p.event_value, p.pass_month))
                if p.event_value
                else rc.random_element()
            )
        rows.append(rc.Row(rc.KIND_PERSON, p.isco_code, flags, tokens))
    for c in certs:
        token = rc.hash_to_group(cert_string(run_id, c.isco_code, c.municipality, c.certificate_no))
        rows.append(rc.Row(rc.KIND_CERT, c.isco_code, rc.FLAG_REVOKED if c.revoked else 0, [token]))
    return rows


def load_persons(engine: Engine) -> tuple[str, str, list[PersonInput]]:
    """The registry as ring inputs: (municipality code, data version, persons)."""
    with engine.connect() as conn:
        muni = conn.execute(select(Municipality.municipality_code)).scalar_one_or_none()
        version = conn.execute(
            select(DataVersion.version).order_by(DataVersion.id.desc()).limit(1)
        ).scalar_one_or_none()
        if muni is None or version is None:
            raise DataUnavailableError("no data bundle has been imported into this node yet")
        candidates = conn.execute(
            select(
                Candidate.candidate_id,
                Candidate.given_name,
                Candidate.family_name,
                Candidate.date_of_birth,
                Candidate.national_id,
            )
        ).all()
        certs = conn.execute(
            select(
                Certificate.candidate_id,
                Qualification.isco_code,
                Certificate.pathway,
                Certificate.status,
                Certificate.issued_on,
                Certificate.certificate_no,
                Certificate.origin_municipality,
                Certificate.origin_certificate_no,
            ).join(Qualification, Qualification.qualification_id == Certificate.qualification_id)
        ).all()
        assessments = conn.execute(
            select(
                Assessment.candidate_id,
                Qualification.isco_code,
                Assessment.result,
                Assessment.assessed_on,
            ).join(Qualification, Qualification.qualification_id == Assessment.qualification_id)
        ).all()
    certified: dict[str, dict[str, dt.date]] = defaultdict(dict)
    revoked: dict[str, list[tuple[str, str]]] = defaultdict(list)
    recognised: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for cid, isco, pathway, status, issued, number, origin, origin_no in certs:
        if pathway != "reciprocity":
            seen = certified[cid].get(isco)
            certified[cid][isco] = issued if seen is None else max(seen, issued)
        if status == "revoked":
            revoked[cid].append((isco, number))
        if pathway == "reciprocity" and status == "valid" and origin and origin_no:
            recognised[cid].append((isco, origin, origin_no))
    fails: dict[str, dict[str, list[dt.date]]] = defaultdict(lambda: defaultdict(list))
    passes: dict[str, dict[str, list[dt.date]]] = defaultdict(lambda: defaultdict(list))
    for cid, isco, result, day in assessments:
        if result == "fail":
            fails[cid][isco].append(day)
        elif result == "pass":
            passes[cid][isco].append(day)
    persons = [
        PersonInput(
            person_id=cid,
            identity=Identity.of(given, family, dob, nid),
            certified=certified.get(cid, {}),
            fails=fails.get(cid, {}),
            passes=passes.get(cid, {}),
            revoked=revoked.get(cid, ()),
            recognised=recognised.get(cid, ()),
        )
        for cid, given, family, dob, nid in candidates
    ]
    return muni, version, persons
