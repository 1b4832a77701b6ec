"""Revocation reconciliation at one node: both the recogniser's and the origin's side.

A certificate revoked at its origin may still be recognised here under reciprocity.
Each such case is a concrete legal problem for this municipality, which holds the
reciprocity record but not the origin's revocation status. The labelled PSI in
`fedaudit.common.psi` lets this node learn exactly that, and lets the origin learn
only how many (padded) references it was asked about.

Every statement between the two nodes is signed with the sender's federation node
key (`fedaudit.pki.identity`), bound to the run and to both municipalities, so the
relaying coordinator can neither ask an origin on its own behalf (a membership
oracle on certificate numbers) nor hand a recogniser a forged answer. Matches stay in
this node's database for its data officer (`fedaudit node reconcile show`); the only
thing that leaves is one DP count, charged to this node's ledger.

Calls, in order, for a run with recogniser R and origins O1..Ok (any relay drives them):
`R.ask(O)` -> `O.answer(batch)` -> `R.resolve(answer)` for each O, then `R.release()`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import structlog
from cryptography import x509
from sqlalchemy import Engine, select

from fedaudit.common import psi
from fedaudit.common.mechanisms import add_noise, plan_noise
from fedaudit.node.domain import Charge, Mechanism
from fedaudit.node.errors import (
    DataUnavailableError,
    InvalidParametersError,
    RequesterNotAllowedError,
    TemplateNotAllowedError,
)
from fedaudit.node.privacy.ledger import Ledger
from fedaudit.node.privacy.policy import Policy
from fedaudit.node.ring.reconcile_store import (
    Reference,
    persons_matched,
    store_matches,
    was_checked,
)
from fedaudit.node.store.models import (
    Certificate,
    DataVersion,
    Municipality,
)
from fedaudit.pki.enrolment import RevocationList
from fedaudit.pki.identity import IdentityError, NodeIdentity

log = structlog.get_logger(__name__)

TEMPLATE = "revocation_reconciliation"
TEMPLATE_VERSION = "1"
RUN_TTL_SECONDS = 3600.0
MAX_BUCKET = 1 << 20
"""Most references one batch may carry (a million): bounds the origin's work per call."""

RECOGNISED_STATUSES = ("valid", "suspended")
"""A recognition that is already revoked or expired here needs no action."""


class ReconcileRefusedError(InvalidParametersError):
    """A reconciliation message is out of protocol (unsigned, misrouted, repeated)."""


class ReconcileNotAllowedError(TemplateNotAllowedError):
    """This node's policy does not take part in this side of reconciliation."""


@dataclass(frozen=True)
class SignedBatch:
    """The recogniser's blinded references to one origin, signed by the recogniser."""

    run_id: str
    sender: str
    origin: str
    points: bytes
    certificate_pem: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedAnswer:
    """The origin's evaluation and labelled table for one batch, signed by the origin."""

    run_id: str
    sender: str
    recipient: str
    evaluated: bytes
    table: bytes
    certificate_pem: bytes
    signature: bytes


@dataclass(frozen=True)
class ReleasedCount:
    """The one thing that leaves the recogniser: a DP count of persons with a match."""

    value: int
    mechanism: Mechanism
    scale: float
    ci_half_width: float
    rho: float
    replayed: bool = False


def query_statement(run_id: str, sender: str, origin: str, points: bytes) -> bytes:
    digest = hashlib.sha256(points).hexdigest()
    return f"fedaudit-reconcile-v1|query|{run_id}|{sender}|{origin}|{digest}".encode()


def answer_statement(
    run_id: str, sender: str, recipient: str, evaluated: bytes, table: bytes
) -> bytes:
    digest = hashlib.sha256(evaluated + b"|" + table).hexdigest()
    return f"fedaudit-reconcile-v1|answer|{run_id}|{sender}|{recipient}|{digest}".encode()


@dataclass
class _Asked:
    blinded: psi.Blinded
    references: list[Reference]
    created: float = field(default_factory=time.monotonic)


class ReconcileService:
    """One node's part in reconciliation runs. Thread-safe."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        *,
        identity: NodeIdentity | None,
        ledger: Ledger | None = None,
        pool: Executor | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        run_ttl: float = RUN_TTL_SECONDS,
        revocations: Callable[[], RevocationList | None] | None = None,
    ) -> None:
        """`identity` is the node's federation certificate and key; without one (a node
        served with --insecure) the node takes no part: nothing would bind its messages
        to the federation. `revocations` gives the CRL in force (`node serve --tls-crl`):
        a revoked peer is refused, and so is everyone while the CRL cannot be trusted."""
        self._engine = engine
        self._policy = policy
        self._identity = identity
        self._ledger = ledger or Ledger(engine, policy)
        self._pool = pool
        self._clock = clock
        self._ttl = run_ttl
        self._revocations = revocations
        self._asked: dict[tuple[str, str, str], _Asked] = {}  # (requester, run, origin)
        self._answered: set[tuple[str, str, str]] = set()  # (requester, run, recogniser)
        self._lock = threading.Lock()

    # --- the recogniser -------------------------------------------------------------------------

    def ask(self, requester: str, run_id: str, origin: str) -> SignedBatch:
        """Blind this node's references to `origin` and sign the batch for it."""
        identity = self._require(requester, receive=True)
        _check_run_id(run_id)
        if origin == identity.name:
            raise ReconcileRefusedError("a node does not reconcile with itself")
        if not self._policy.reconciliation.allows_peer(origin):
            raise ReconcileNotAllowedError(f"this node's policy does not reconcile with {origin}")
        references = self._references(origin)
        blinded = psi.blind_references(
            run_id, origin, [r.number for r in references], pool=self._pool
        )
        with self._lock:
            self._expire()
            key = (requester, run_id, origin)
            if key in self._asked or was_checked(self._engine, requester, run_id, origin):
                raise ReconcileRefusedError(f"this run already asked {origin}; runs are once only")
            self._asked[key] = _Asked(blinded=blinded, references=references)
        statement = query_statement(run_id, identity.name, origin, blinded.points)
        log.info("reconcile.asked", run_id=run_id, origin=origin, padded=_count(blinded.points))
        return SignedBatch(
            run_id=run_id,
            sender=identity.name,
            origin=origin,
            points=blinded.points,
            certificate_pem=identity.certificate_pem,
            signature=identity.sign(statement),
        )

    def resolve(self, requester: str, answer: SignedAnswer) -> None:
        """Read the origin's answer, keep the matches here. Returns nothing on purpose."""
        identity = self._require(requester, receive=True)
        if answer.recipient != identity.name:
            raise ReconcileRefusedError(
                f"this answer is for {answer.recipient}, this node is {identity.name}"
            )
        with self._lock:
            asked = self._asked.get((requester, answer.run_id, answer.sender))
        if asked is None:
            raise ReconcileRefusedError(
                f"this node did not ask {answer.sender} in run {answer.run_id!r} (or it expired)"
            )
        statement = answer_statement(
            answer.run_id, answer.sender, answer.recipient, answer.evaluated, answer.table
        )
        self._verify(answer.certificate_pem, statement, answer.signature, answer.sender)
        try:
            days = psi.read_answer(asked.blinded, answer.evaluated, answer.table, pool=self._pool)
        except psi.PsiError as exc:
            raise ReconcileRefusedError(
                f"the answer of {answer.sender} is malformed: {exc}"
            ) from exc
        store_matches(
            self._engine,
            requester,
            answer.run_id,
            origin=answer.sender,
            references=asked.references,
            days=days,
            data_version=self._data_version(),
            checked_at=self._clock(),
        )
        with self._lock:
            self._asked.pop((requester, answer.run_id, answer.sender), None)

    def release(
        self, requester: str, run_id: str, *, rho: float, confidence: float = 0.95
    ) -> ReleasedCount:
        """The DP count of persons here whose recognition rests on a revoked certificate.

        Sensitivity 1: a person adds at most one to the count whatever their number of
        recognitions. Charged once per run; asking again replays the stored release.
        """
        self._require(requester, receive=True)
        _check_run_id(run_id)
        request_id = f"reconcile:{run_id}"
        stored = self._ledger.find_by_request_id(request_id, requester=requester)
        if stored is not None and not stored.answer_json:
            raise ReconcileRefusedError(
                "this run's release was charged but not delivered; it is not drawn again"
            )
        if stored is not None and stored.answer_json:
            data = json.loads(stored.answer_json)
            return ReleasedCount(
                **{**data, "mechanism": Mechanism(data["mechanism"]), "replayed": True}
            )
        noise, charge = plan_noise(
            Mechanism.DISCRETE_GAUSSIAN,
            rho=rho,
            epsilon=None,
            sensitivity=1,
            confidence=confidence,
        )
        version = self._data_version()
        entry_id = self._ledger.reserve(
            request_id=request_id,
            requester=requester,
            template=TEMPLATE,
            template_version=TEMPLATE_VERSION,
            query_hash=hashlib.sha256(f"{TEMPLATE}|{run_id}".encode()).hexdigest(),
            data_version=version,
            mechanism=Mechanism.DISCRETE_GAUSSIAN,
            charge=Charge(rho=charge.rho),
            now=self._clock(),
            # Matches may be anyone's: charged to every cohort that has any.
            cohorts=self._ledger.existing_cohorts(self._clock()),
        )
        try:
            persons = persons_matched(self._engine, requester, run_id)
        except Exception:
            self._ledger.cancel(entry_id)  # nothing was read: a full refund
            raise
        try:
            (value,) = add_noise(noise, [persons])
            released = ReleasedCount(
                value=value,
                mechanism=Mechanism.DISCRETE_GAUSSIAN,
                scale=noise.scale,
                ci_half_width=noise.ci_half_width,
                rho=charge.rho,
            )
            stored_json = json.dumps(
                {
                    "value": value,
                    "mechanism": released.mechanism.value,
                    "scale": released.scale,
                    "ci_half_width": released.ci_half_width,
                    "rho": released.rho,
                }
            )
        except Exception:
            self._ledger.fail(entry_id)  # noise was drawn on real data: the charge stands
            raise
        self._ledger.complete(entry_id, stored_json)
        return released

    # --- the origin -----------------------------------------------------------------------------

    def answer(self, requester: str, batch: SignedBatch) -> SignedAnswer:
        """Evaluate a federation peer's signed batch and attach this node's labelled table."""
        identity = self._require(requester, share=True)
        _check_run_id(batch.run_id)
        if batch.origin != identity.name:
            raise ReconcileRefusedError(
                f"this batch is for {batch.origin}, this node is {identity.name}"
            )
        if batch.sender == identity.name:
            raise ReconcileRefusedError("a node does not reconcile with itself")
        if not self._policy.reconciliation.allows_peer(batch.sender):
            raise ReconcileNotAllowedError(
                f"this node's policy does not reconcile with {batch.sender}"
            )
        statement = query_statement(batch.run_id, batch.sender, batch.origin, batch.points)
        self._verify(batch.certificate_pem, statement, batch.signature, batch.sender)
        padded = _count(batch.points)
        if padded != psi.bucket(padded) or padded > MAX_BUCKET:
            raise ReconcileRefusedError(
                f"a batch must hold a padded bucket of at most {MAX_BUCKET} elements, got {padded}"
            )
        with self._lock:
            key = (requester, batch.run_id, batch.sender)
            if key in self._answered:
                raise ReconcileRefusedError(f"{batch.sender} was already answered in this run")
            self._answered.add(key)
        secret = psi.new_scalar()
        try:
            evaluated = psi.evaluate(secret, batch.points, pool=self._pool)
        except psi.PsiError as exc:
            raise ReconcileRefusedError(f"the batch of {batch.sender} is malformed: {exc}") from exc
        table = psi.revocation_table(
            secret, batch.run_id, identity.name, self._revoked(), pool=self._pool
        )
        log.info("reconcile.answered", run_id=batch.run_id, peer=batch.sender, padded=padded)
        signature = identity.sign(
            answer_statement(batch.run_id, identity.name, batch.sender, evaluated, table)
        )
        return SignedAnswer(
            run_id=batch.run_id,
            sender=identity.name,
            recipient=batch.sender,
            evaluated=evaluated,
            table=table,
            certificate_pem=identity.certificate_pem,
            signature=signature,
        )

    # --- helpers ------------------------------------------------------------------------------

    def _require(
        self, requester: str, *, receive: bool = False, share: bool = False
    ) -> NodeIdentity:
        if requester not in self._policy.requesters or not self._policy.allows(requester, TEMPLATE):
            raise RequesterNotAllowedError(
                f"requester {requester!r} may not run revocation reconciliation at this node"
            )
        settings = self._policy.reconciliation
        if receive and not settings.receive:
            raise ReconcileNotAllowedError(
                "this node's policy does not receive revocation reconciliation "
                "(revocation_reconciliation.receive is false)"
            )
        if share and not settings.share_revocations:
            raise ReconcileNotAllowedError(
                "this node's policy does not share its revocations "
                "(revocation_reconciliation.share_revocations is false)"
            )
        if self._identity is None:
            raise ReconcileNotAllowedError(
                "this node has no federation certificate (served with --insecure): "
                "reconciliation needs one to prove who it is"
            )
        return self._identity

    def _verify(
        self, certificate_pem: bytes, statement: bytes, signature: bytes, name: str
    ) -> None:
        assert self._identity is not None
        try:
            self._identity.verify_peer(
                certificate_pem, statement, signature, claimed_name=name, now=self._clock()
            )
        except IdentityError as exc:
            raise ReconcileRefusedError(f"refused a message said to be from {name}: {exc}") from exc
        if self._revocations is not None:
            crl = self._revocations()
            if crl is None:
                raise ReconcileRefusedError(
                    "this node cannot check certificate revocation (its CRL is unusable)"
                )
            if crl.is_revoked(x509.load_pem_x509_certificate(certificate_pem)):
                raise ReconcileRefusedError(
                    f"refused a message from {name}: its certificate was revoked by the federation CA"
                )

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, a in self._asked.items() if now - a.created > self._ttl]:
            del self._asked[key]

    def _references(self, origin: str) -> list[Reference]:
        """This node's live recognitions of `origin`'s certificates, one per origin number."""
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(
                        Certificate.certificate_id,
                        Certificate.candidate_id,
                        Certificate.origin_certificate_no,
                    )
                    .where(
                        Certificate.pathway == "reciprocity",
                        Certificate.origin_municipality == origin,
                        Certificate.status.in_(RECOGNISED_STATUSES),
                    )
                    .order_by(Certificate.certificate_id)
                ).all()
        except Exception as exc:
            raise DataUnavailableError("the node's database is not reachable") from exc
        by_number: dict[str, Reference] = {}
        for certificate_id, candidate_id, number in rows:
            key = psi.normalise_certificate_no(number or "")
            if not key:
                continue
            ref = by_number.setdefault(key, Reference(number, [], []))
            ref.certificate_ids.append(certificate_id)
            ref.candidate_ids.append(candidate_id)
        return list(by_number.values())

    def _revoked(self) -> list[tuple[str, dt.date]]:
        """Certificates this node issued and revoked, with the day of revocation."""
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(
                        Certificate.certificate_no,
                        Certificate.status_changed_on,
                        Certificate.issued_on,
                    ).where(Certificate.status == "revoked", Certificate.pathway != "reciprocity")
                ).all()
        except Exception as exc:
            raise DataUnavailableError("the node's database is not reachable") from exc
        return [(number, changed or issued) for number, changed, issued in rows]

    def _data_version(self) -> str:
        with self._engine.connect() as conn:
            version = conn.execute(
                select(DataVersion.version).order_by(DataVersion.id.desc()).limit(1)
            ).scalar_one_or_none()
            municipality = conn.execute(select(Municipality.municipality_code)).scalar_one_or_none()
        if version is None or municipality is None:
            raise DataUnavailableError("no data bundle has been imported into this node yet")
        return version


def _count(points: bytes) -> int:
    return len(points) // psi.POINT_BYTES


def _check_run_id(run_id: str) -> None:
    if not run_id or len(run_id) > 100 or not run_id.isprintable():
        raise InvalidParametersError("run_id must be 1 to 100 printable characters")
