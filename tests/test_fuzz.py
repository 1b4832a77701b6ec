"""Bad input everywhere: property-based fuzzing of the bundle, plan and policy parsers and
of the query handler over real gRPC.

Properties: a parser either accepts its input or raises its own precise error
(BundleError with `file:line: column: message` lines, PlanError, PolicyError), never
anything else; a failed import writes nothing; the node never answers INTERNAL or
UNKNOWN and a refused request never changes the ledger.

Examples are derandomised (same inputs in every CI run). FEDAUDIT_FUZZ_SCALE=N
multiplies every example count and FEDAUDIT_FUZZ_RANDOM=1 draws fresh inputs, for a
longer hunt on a workstation. The number of inputs tried per target is printed
(`pytest -s`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from fedaudit import PROTOCOL_METADATA_KEY, PROTOCOL_VERSION, REQUESTER_METADATA_KEY
from fedaudit.common.budget_units import rho_to_units
from fedaudit.coordinator.errors import PlanError
from fedaudit.coordinator.planning.plan import AuditPlan, load_plan, parse_plan
from fedaudit.node.errors import BundleError, PolicyError
from fedaudit.node.ingest.bundle import import_bundle, validate_bundle
from fedaudit.node.privacy.policy import Policy, load_policy, parse_policy
from fedaudit.node.query import catalogue
from fedaudit.node.query.service import NodeService
from fedaudit.node.rpc.guard import MalformedRequestGuard
from fedaudit.node.rpc.limits import LimitSettings, RequestLimiter
from fedaudit.node.server import RunningNode, start_node_server
from fedaudit.node.store.db import make_engine
from fedaudit.node.store.models import REGISTRY_TABLES, DataVersion, LedgerEntry
from fedaudit.wire.v1 import node_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "bundle_small"
DEFAULT_PLAN = ROOT / "fedaudit" / "plans" / "default.yaml"
EXAMPLE_POLICY = ROOT / "deploy" / "policy.example.yaml"
REQUESTER = "oversight-board"

_SCALE = max(1, int(os.environ.get("FEDAUDIT_FUZZ_SCALE", "1")))
TRIED: Counter[str] = Counter()


def fuzz(examples: int) -> settings:
    """Hypothesis settings for one target: bounded, no deadline, reproducible by default."""
    return settings(
        max_examples=examples * _SCALE,
        deadline=None,
        derandomize=os.environ.get("FEDAUDIT_FUZZ_RANDOM") != "1",
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """Print how many inputs each target saw, for the issue's record."""
    yield
    for target, count in sorted(TRIED.items()):
        print(f"fuzz inputs tried: {target} = {count}")


# --- shared strategies -------------------------------------------------------------------

TRICKS = (
    "\u202e",  # right-to-left override
    "\u200b",  # zero-width space
    "\u200d",  # zero-width joiner
    "\ufeff",  # byte order mark
    "\x00",
    "\n",
    "\r\n",
    "\t",
    '"',
    ",",
    "a\u0301",  # combining accent
    "\uff21",  # fullwidth A
    "\uff12\uff10\uff12\uff14",  # fullwidth 2024
    "\u0662\u0660\u0662\u0664",  # Arabic-Indic 2024
    "\U0001d7da",  # mathematical double-struck 2
    "\U0001f600",
    "\u0130",  # dotted capital I (case-folding changes length)
    "${jndi:x}",
    "'; DROP TABLE ledger_entries; --",
    "%s%n",
    "../../etc/passwd",
)

tricky_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(TRICKS),
    st.builds(
        lambda a, t, b: a + t + b,
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", max_size=12),
        st.sampled_from(TRICKS),
        st.text(max_size=5),
    ),
    st.integers(1, 200_000).map(lambda n: "x" * n),
)

special_floats = st.sampled_from(
    [
        0.0,
        -0.0,
        math.nan,
        math.inf,
        -math.inf,
        5e-324,
        2.2250738585072014e-308,
        1e-300,
        1e-30,
        1e-12,
        1e-7,
        -1.0,
        1e-3,
        0.05,
        0.5,
        1.0,
        1 - 1e-16,
        1e6,
        1e6 + 1,
        1e20,
        1e200,
        1.7976931348623157e308,
    ]
)
any_float = st.one_of(special_floats, st.floats(allow_nan=True, allow_infinity=True))

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    any_float,
    tricky_text,
    st.dates(),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(tricky_text, st.integers(), st.none()), children, max_size=5),
    ),
    max_leaves=25,
)


def _mutate(document: Any, data: st.DataObject, depth: int = 0) -> Any:
    """Replace, drop or add one thing somewhere in a valid document."""
    action = data.draw(st.sampled_from(["replace", "descend", "drop", "add"]), label="action")
    if action == "replace" or not isinstance(document, dict | list) or not document or depth > 6:
        return data.draw(yaml_values, label="replacement")
    if isinstance(document, dict):
        key = data.draw(st.sampled_from(sorted(document, key=str)), label="key")
        copy = dict(document)
        if action == "drop":
            del copy[key]
        elif action == "add":
            copy[data.draw(tricky_text, label="new key")] = data.draw(yaml_values, label="value")
        else:
            copy[key] = _mutate(document[key], data, depth + 1)
        return copy
    index = data.draw(st.integers(0, len(document) - 1), label="index")
    copy = list(document)
    if action == "drop":
        del copy[index]
    elif action == "add":
        copy.insert(index, data.draw(yaml_values, label="value"))
    else:
        copy[index] = _mutate(document[index], data, depth + 1)
    return copy


def _dump(document: Any) -> str:
    """YAML text of a document; values PyYAML cannot represent become their repr."""
    try:
        return yaml.safe_dump(document, allow_unicode=True)
    except yaml.YAMLError:
        return repr(document)


# --- plan parser -------------------------------------------------------------------------

VALID_PLAN = yaml.safe_load(DEFAULT_PLAN.read_text(encoding="utf-8"))


def _attempt(expected: type[Exception], call: Callable[[], object]) -> object:
    """The call's result, or the `expected` exception it raised (anything else propagates)."""
    try:
        return call()
    except expected as exc:
        return exc


def _check_plan(data: object) -> None:
    outcome = _attempt(PlanError, lambda: parse_plan(data, source="fuzz.yaml"))
    if isinstance(outcome, PlanError):
        assert str(outcome).strip(), "a PlanError must say what is wrong"
    else:
        assert isinstance(outcome, AuditPlan)


@fuzz(300)
@given(data=yaml_values)
def test_plan_parser_arbitrary_structures(data: object) -> None:
    """Any YAML-shaped value is a plan or a PlanError, never another exception."""
    TRIED["plan parser (arbitrary)"] += 1
    _check_plan(data)
    _check_plan({"name": "x", "requester": "r", "confidence": 0.9, "checks": data})


@fuzz(400)
@given(data=st.data())
def test_plan_parser_mutated_default_plan(data: st.DataObject) -> None:
    """Mutations of the default plan (values, dropped and unknown keys) parse or raise PlanError."""
    TRIED["plan parser (mutated default plan)"] += 1
    _check_plan(_mutate(VALID_PLAN, data))


@fuzz(150)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)), data=st.data())
def test_plan_loader_arbitrary_files(text: str | bytes, data: st.DataObject) -> None:
    """A plan file of arbitrary text or bytes (YAML errors, non-UTF-8) loads or raises PlanError."""
    TRIED["plan loader (files)"] += 1
    mutated = _dump(_mutate(VALID_PLAN, data))
    for content in (text, mutated):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "plan.yaml"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8", errors="surrogatepass")
            outcome = _attempt(PlanError, lambda path=path: load_plan(path))
            assert isinstance(outcome, PlanError | AuditPlan)


# --- policy parser -----------------------------------------------------------------------

VALID_POLICY = yaml.safe_load(EXAMPLE_POLICY.read_text(encoding="utf-8"))


def _check_policy(data: object) -> None:
    policy = _attempt(PolicyError, lambda: parse_policy(data, source="fuzz.yaml"))
    if isinstance(policy, PolicyError):
        assert str(policy).startswith("fuzz.yaml"), "a PolicyError names its source"
        return
    assert isinstance(policy, Policy)
    for name, entry in policy.requesters.items():
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}", name)
        assert math.isfinite(entry.rho_per_period)
        assert entry.rho_per_period > 0
    assert math.isfinite(policy.node_rho_total)
    assert 0 < policy.max_rho_per_request <= policy.node_rho_total


@fuzz(300)
@given(data=yaml_values)
def test_policy_parser_arbitrary_structures(data: object) -> None:
    """Any YAML-shaped value is a policy or a PolicyError, never another exception."""
    TRIED["policy parser (arbitrary)"] += 1
    _check_policy(data)


@fuzz(400)
@given(data=st.data())
def test_policy_parser_mutated_example_policy(data: st.DataObject) -> None:
    """Mutations of the example policy parse into sane values or raise PolicyError."""
    TRIED["policy parser (mutated example policy)"] += 1
    _check_policy(_mutate(VALID_POLICY, data))


@fuzz(150)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)), data=st.data())
def test_policy_loader_arbitrary_files(text: str | bytes, data: st.DataObject) -> None:
    """A policy file of arbitrary text or bytes loads or raises PolicyError naming the file."""
    TRIED["policy loader (files)"] += 1
    mutated = _dump(_mutate(VALID_POLICY, data))
    for content in (text, mutated):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "policy.yaml"
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8", errors="surrogatepass")
            outcome = _attempt(PolicyError, lambda path=path: load_policy(path))
            if isinstance(outcome, PolicyError):
                assert str(path) in str(outcome)


# --- bundle parser -----------------------------------------------------------------------

FIXTURE_FILES = {p.name: p.read_bytes() for p in sorted(FIXTURE.glob("*.csv"))}
PROBLEM_LINE = re.compile(r"(?s)(?P<file>[^\n]+?):(?P<line>[0-9]+| -): (?P<column>[^\n]+?): .+")
TODAY = dt.date(2026, 1, 15)


def _mutate_bundle(files: dict[str, bytes], data: st.DataObject) -> dict[str, bytes]:
    """One to three byte-, line- or field-level mutations of the fixture bundle."""
    files = dict(files)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        name = data.draw(st.sampled_from(sorted(files)), label="file")
        raw = files[name]
        lines = raw.split(b"\n")
        kind = data.draw(
            st.sampled_from(
                [
                    "field",
                    "field",
                    "field",
                    "drop_line",
                    "dup_line",
                    "truncate",
                    "bytes",
                    "header",
                    "remove_file",
                    "extra_file",
                    "swap_lines",
                ]
            ),
            label="kind",
        )
        if kind == "field":
            i = data.draw(st.integers(0, max(0, len(lines) - 1)), label="line")
            fields = lines[i].decode("utf-8", "replace").split(",")
            j = data.draw(st.integers(0, max(0, len(fields) - 1)), label="field")
            fields[j] = data.draw(tricky_text.filter(lambda s: len(s) < 20_000), label="value")
            lines[i] = ",".join(fields).encode("utf-8", "surrogatepass")
            files[name] = b"\n".join(lines)
        elif kind == "drop_line" and len(lines) > 1:
            del lines[data.draw(st.integers(0, len(lines) - 1), label="line")]
            files[name] = b"\n".join(lines)
        elif kind == "dup_line":
            i = data.draw(st.integers(0, len(lines) - 1), label="line")
            lines.insert(i, lines[i])
            files[name] = b"\n".join(lines)
        elif kind == "swap_lines" and len(lines) > 2:
            i, j = data.draw(st.permutations(range(len(lines))), label="order")[:2]
            lines[i], lines[j] = lines[j], lines[i]
            files[name] = b"\n".join(lines)
        elif kind == "truncate":
            files[name] = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
        elif kind == "bytes":
            at = data.draw(st.integers(0, len(raw)), label="at")
            files[name] = raw[:at] + data.draw(st.binary(min_size=1, max_size=8)) + raw[at:]
        elif kind == "header":
            header = lines[0] + b"," + data.draw(tricky_text).encode("utf-8", "surrogatepass")
            files[name] = b"\n".join([header, *lines[1:]])
        elif kind == "remove_file":
            del files[name]
            if not files:
                break
        elif kind == "extra_file":
            files[data.draw(st.sampled_from(["notes.csv", "candidates.CSV", "appeal.csv"]))] = raw
    return files


def _snapshot(engine: Engine) -> tuple[Any, ...]:
    """Every registry table's row count and the data versions: what an import would change."""
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(select(func.count()).select_from(m.__table__)).scalar_one()
            for m in REGISTRY_TABLES
        )
        versions = tuple(conn.execute(select(DataVersion.version)).scalars())
    return counts, versions


@pytest.fixture(scope="module")
def bundle_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A SQLite node database holding the fixture bundle."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz-bundle') / 'node.db'}")
    import_bundle(engine, FIXTURE)
    yield engine
    engine.dispose()


@fuzz(250)
@given(data=st.data())
def test_bundle_parser_mutated_bundles(bundle_engine: Engine, data: st.DataObject) -> None:
    """Mutated bundles parse or raise BundleError with file:line: column: lines; a failed import writes nothing."""
    TRIED["bundle parser + import (mutated bundles)"] += 1
    files = _mutate_bundle(FIXTURE_FILES, data)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        bundle.mkdir()
        for name, raw in files.items():
            (bundle / name).write_bytes(raw)
        checked = _attempt(BundleError, lambda: validate_bundle(bundle, today=TODAY))
        valid = not isinstance(checked, BundleError)
        if isinstance(checked, BundleError):
            assert checked.problems
            assert checked.total >= len(checked.problems) - 1
            for line in checked.problems:
                assert PROBLEM_LINE.fullmatch(line), f"not file:line: column: message: {line!r}"
        before = _snapshot(bundle_engine)
        now = dt.datetime(2026, 1, 15, 9, tzinfo=dt.UTC)
        imported = _attempt(BundleError, lambda: import_bundle(bundle_engine, bundle, now=now))
        if isinstance(imported, BundleError):
            # A valid bundle of another municipality is refused on purpose (no silent swap).
            assert not valid or "municipality change" in str(imported), "validate/import disagree"
            assert _snapshot(bundle_engine) == before, "a failed import wrote something"
        else:
            assert valid, "import accepted what validate refused"
            after = _snapshot(bundle_engine)
            assert len(after[1]) == len(before[1]) + 1


# --- query handler over gRPC ---------------------------------------------------------------

METADATA = ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, REQUESTER))
REFUSAL_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, Engine]]:
    """One node with the production interceptors and a generous budget, shared by all examples."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fuzz-node') / 'node.db'}")
    import_bundle(engine, FIXTURE)
    policy = parse_policy(
        {
            "version": 1,
            "requesters": {REQUESTER: {"rho_per_period": 1000.0}, "other": {"rho_per_period": 1.0}},
            "budget": {"period": "year", "node_rho_total": 10_000.0, "max_rho_per_request": 5.0},
        }
    )
    limiter = RequestLimiter(LimitSettings(max_concurrent=64, rate_per_second=0))
    node = start_node_server(
        NodeService(engine, policy),
        interceptors=[limiter, MalformedRequestGuard()],
    )
    yield node, engine
    node.stop(grace=None)
    engine.dispose()


def _ledger(engine: Engine) -> tuple[int, int]:
    """(entries, sum of rho units) over the whole ledger."""
    with engine.connect() as conn:
        row = conn.execute(
            select(func.count(), func.coalesce(func.sum(LedgerEntry.rho_units), 0))
        ).one()
    return int(row[0]), int(row[1])


def _assert_precise_refusal(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    assert exc.code() in REFUSAL_CODES, f"{exc.code()}: {exc.details()}"
    status = rpc_status.from_call(exc)
    assert status is not None, f"refusal without details: {exc.code()} {exc.details()}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "fedaudit.org"
    assert info.reason
    return info


KNOWN_DIMENSIONS = sorted(catalogue.DIMENSIONS)
KNOWN_KEYS = ["7411", "5120", "3112", "2024", "2023", "female", "national", "4", "P01", "12"]

names = st.one_of(st.sampled_from(KNOWN_DIMENSIONS), tricky_text)
request_ids = st.one_of(
    st.uuids().map(str),
    st.sampled_from(["r1", "r1\n", "r\u200b1", "r" * 128, "r" * 129, "", " r1", "r1\x00"]),
    tricky_text,
)
query_requests = st.builds(
    pb.QueryRequest,
    request_id=request_ids,
    template=st.one_of(st.sampled_from(sorted(catalogue.TEMPLATES)), tricky_text),
    group_by=st.lists(names, max_size=6),
    filters=st.lists(
        st.builds(
            pb.Filter,
            dimension=names,
            keys=st.lists(st.one_of(st.sampled_from(KNOWN_KEYS), tricky_text), max_size=4),
        ),
        max_size=3,
    ),
    params=st.dictionaries(
        st.one_of(st.just("limit_days"), tricky_text), st.integers(-(2**63), 2**63 - 1), max_size=3
    ),
    mechanism=st.integers(-3, 4),
    rho=any_float,
    epsilon=any_float,
    confidence=any_float,
)


@st.composite
def plausible_requests(draw: st.DrawFn) -> pb.QueryRequest:
    """A valid request with, half of the time, one field replaced by something arbitrary.

    Fully arbitrary messages are almost always refused at the first check; these reach
    the ledger, so the "answered requests charge exactly, refused ones nothing" half of
    the property is exercised too.
    """
    template = catalogue.TEMPLATES[draw(st.sampled_from(sorted(catalogue.TEMPLATES)))]
    gaussian = draw(st.booleans())
    request = pb.QueryRequest(
        request_id=draw(st.uuids()).hex,
        template=template.name,
        group_by=draw(st.lists(st.sampled_from(template.dimensions), max_size=2, unique=True)),
        mechanism=pb.DISCRETE_GAUSSIAN if gaussian else pb.DISCRETE_LAPLACE,
        confidence=draw(st.sampled_from([0.0, 0.9, 0.95, 0.99])),
    )
    if gaussian:
        request.rho = draw(st.sampled_from([1e-6, 0.001, 0.01, 0.05, 0.5, 4.9]))
    else:
        request.epsilon = draw(st.sampled_from([1e-3, 0.1, 0.5, 1.0, 3.0]))
    field = draw(
        st.sampled_from(
            [
                None,
                None,
                None,
                "request_id",
                "group_by",
                "filters",
                "params",
                "mechanism",
                "rho",
                "epsilon",
                "confidence",
            ]
        )
    )
    arbitrary = draw(query_requests)
    if field is not None:
        request.ClearField(field)  # type: ignore[arg-type]
        value = getattr(arbitrary, field)
        if field in ("group_by", "filters"):
            getattr(request, field).extend(value)
        elif field == "params":
            request.params.update(value)
        else:
            setattr(request, field, value)
    return request


metadata_variants = st.sampled_from(
    [
        METADATA,
        METADATA,
        METADATA,
        ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, "other")),
        ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, "nobody")),
        ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, "OVERSIGHT-BOARD")),
        ((PROTOCOL_METADATA_KEY, PROTOCOL_VERSION), (REQUESTER_METADATA_KEY, REQUESTER + " ")),
        ((PROTOCOL_METADATA_KEY, "2"), (REQUESTER_METADATA_KEY, REQUESTER)),
        ((REQUESTER_METADATA_KEY, REQUESTER),),
    ]
)


@fuzz(400)
@given(request=st.one_of(query_requests, plausible_requests()), metadata=metadata_variants)
def test_query_handler_arbitrary_requests(
    fuzz_node: tuple[RunningNode, Engine], request: pb.QueryRequest, metadata: Any
) -> None:
    """Arbitrary QueryRequests get an answer or a precise refusal; a refusal never charges."""
    TRIED["query handler (QueryRequest over gRPC, Preflight + Query)"] += 1
    node, engine = fuzz_node
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        preflight = channel.unary_unary(
            "/fedaudit.wire.v1.AuditNode/Preflight",
            request_serializer=pb.QueryRequest.SerializeToString,
            response_deserializer=pb.PreflightResponse.FromString,
        )
        query = channel.unary_unary(
            "/fedaudit.wire.v1.AuditNode/Query",
            request_serializer=pb.QueryRequest.SerializeToString,
            response_deserializer=pb.QueryResponse.FromString,
        )
        before = _ledger(engine)
        try:
            preflight(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            _assert_precise_refusal(exc)
        assert _ledger(engine) == before, "a preflight changed the ledger"
        try:
            answer = query(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            _assert_precise_refusal(exc)
            assert _ledger(engine) == before, "a refused request changed the ledger"
            return
    TRIED["query handler: answered"] += 1
    entries, units = _ledger(engine)
    if answer.replayed:
        assert (entries, units) == before
    else:
        assert (entries, units) == (before[0] + 1, before[1] + rho_to_units(answer.charge.rho))
        assert 1 <= len(request.request_id) <= 128


@fuzz(150)
@given(raw=st.one_of(st.binary(max_size=300), st.sampled_from([b"\xff", b"\x0a\x05abc"])))
def test_query_handler_raw_bytes(fuzz_node: tuple[RunningNode, Engine], raw: bytes) -> None:
    """Random bytes sent as a request on every method get a precise status, never INTERNAL, never a charge."""
    TRIED["query handler (raw bytes on 3 methods)"] += 1
    node, engine = fuzz_node
    before = _ledger(engine)
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        for method in ("GetCapabilities", "Preflight", "Query"):
            call = channel.unary_unary(f"/fedaudit.wire.v1.AuditNode/{method}")
            try:
                call(raw, metadata=METADATA, timeout=30)
            except grpc.RpcError as exc:
                _assert_precise_refusal(exc)
    assert _ledger(engine) == before


def test_oversized_repeated_fields_are_refused_precisely(
    fuzz_node: tuple[RunningNode, Engine],
) -> None:
    """100k group_by entries, filter keys or params (under the size cap) are refused, free."""
    node, engine = fuzz_node
    huge = [f"d{i}" for i in range(100_000)]
    requests = [
        pb.QueryRequest(
            request_id="big-1",
            template="appeal_outcomes",
            group_by=huge,
            rho=0.1,
            mechanism=pb.DISCRETE_GAUSSIAN,
        ),
        pb.QueryRequest(
            request_id="big-2",
            template="certificates_issued",
            filters=[pb.Filter(dimension="isco_code", keys=huge)],
            rho=0.1,
            mechanism=pb.DISCRETE_GAUSSIAN,
        ),
        pb.QueryRequest(
            request_id="big-3",
            template="certificates_issued",
            filters=[pb.Filter(dimension="isco_code", keys=["7411"] * 100_000)],
            group_by=["isco_code", "provider", "period", "sex"],
            rho=1e-30,
            mechanism=pb.DISCRETE_GAUSSIAN,
        ),
        pb.QueryRequest(
            request_id="big-4",
            template="recognition_decision_time",
            params=dict.fromkeys(huge[:20000], 1),
            rho=0.1,
            mechanism=pb.DISCRETE_GAUSSIAN,
        ),
        pb.QueryRequest(
            request_id="big-5",
            template="certificates_issued",
            filters=[pb.Filter(dimension="isco_code", keys=["7411"])] * 20_000,
            rho=0.1,
            mechanism=pb.DISCRETE_GAUSSIAN,
        ),
    ]
    before = _ledger(engine)
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        query = channel.unary_unary(
            "/fedaudit.wire.v1.AuditNode/Query",
            request_serializer=pb.QueryRequest.SerializeToString,
            response_deserializer=pb.QueryResponse.FromString,
        )
        for request in requests:
            with pytest.raises(grpc.RpcError) as caught:
                query(request, metadata=METADATA, timeout=30)
            info = _assert_precise_refusal(caught.value)
            assert info.reason == "INVALID_PARAMETERS"
            assert len(caught.value.details()) < 1000, "refusals must not echo huge inputs"
    assert _ledger(engine) == before


@pytest.mark.parametrize(
    ("mechanism", "field", "value"),
    [
        (pb.DISCRETE_GAUSSIAN, "rho", 1e308),
        (pb.DISCRETE_GAUSSIAN, "rho", 1e-30),
        (pb.DISCRETE_GAUSSIAN, "rho", 5e-324),
        (pb.DISCRETE_GAUSSIAN, "rho", math.nan),
        (pb.DISCRETE_GAUSSIAN, "rho", -math.inf),
        (pb.DISCRETE_LAPLACE, "epsilon", 1e308),
        (pb.DISCRETE_LAPLACE, "epsilon", 1e-300),
        (pb.DISCRETE_LAPLACE, "epsilon", math.inf),
    ],
)
def test_absurd_privacy_costs_are_refused_fast_and_free(
    fuzz_node: tuple[RunningNode, Engine], mechanism: int, field: str, value: float
) -> None:
    """Huge, denormal, NaN and infinite rho/epsilon: INVALID_ARGUMENT at once (preflight too), no charge."""
    node, engine = fuzz_node
    request = pb.QueryRequest(
        request_id=f"absurd-{uuid.uuid4().hex}",
        template="appeal_outcomes",
        mechanism=mechanism,  # type: ignore[arg-type]
        **{field: value},
    )
    before = _ledger(engine)
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        for method, response in (("Preflight", pb.PreflightResponse), ("Query", pb.QueryResponse)):
            call = channel.unary_unary(
                f"/fedaudit.wire.v1.AuditNode/{method}",
                request_serializer=pb.QueryRequest.SerializeToString,
                response_deserializer=response.FromString,
            )
            with pytest.raises(grpc.RpcError) as caught:
                call(request, metadata=METADATA, timeout=5)  # 1e-30 used to spin for minutes
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _assert_precise_refusal(caught.value).reason == "INVALID_PARAMETERS"
    assert _ledger(engine) == before


def test_request_id_with_trailing_newline_is_refused(
    fuzz_node: tuple[RunningNode, Engine],
) -> None:
    """A request id 'r1\\n' is not letters, digits and . _ : - and must be refused."""
    node, _ = fuzz_node
    request = pb.QueryRequest(
        request_id=f"nl-{uuid.uuid4().hex}\n",
        template="appeal_outcomes",
        mechanism=pb.DISCRETE_GAUSSIAN,
        rho=0.01,
    )
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        call = channel.unary_unary(
            "/fedaudit.wire.v1.AuditNode/Query",
            request_serializer=pb.QueryRequest.SerializeToString,
            response_deserializer=pb.QueryResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=METADATA, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("period", ["\u0662\u0660\u0662\u0664", "2024\n"])
def test_plan_periods_must_be_ascii_years(period: str) -> None:
    """A plan period must be four ASCII digits: the nodes' period keys are."""
    plan = dict(VALID_PLAN, periods=[period])
    with pytest.raises(PlanError):
        parse_plan(plan, source="plan.yaml")


def test_bundle_fuzz_saw_valid_and_invalid_bundles() -> None:
    """The bundle mutator is not vacuous: the fixture itself imports, a mutation can be refused."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b"
        shutil.copytree(FIXTURE, bundle)
        validate_bundle(bundle, today=TODAY)
        (bundle / "candidates.csv").write_bytes(
            FIXTURE_FILES["candidates.csv"].replace(b"female", b"fe\xe2\x80\x8bmale", 1)
        )
        with pytest.raises(BundleError) as caught:
            validate_bundle(bundle, today=TODAY)
    assert any(p.startswith("candidates.csv:2: sex:") for p in caught.value.problems)


def test_long_protocol_version_header_gets_a_precise_refusal(
    fuzz_node: tuple[RunningNode, Engine],
) -> None:
    """A 6000-character protocol version header is FAILED_PRECONDITION with ErrorInfo, not a broken stream."""
    node, _ = fuzz_node
    metadata = ((PROTOCOL_METADATA_KEY, "v" * 6000), (REQUESTER_METADATA_KEY, REQUESTER))
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        call = channel.unary_unary(
            "/fedaudit.wire.v1.AuditNode/GetCapabilities",
            request_serializer=pb.CapabilitiesRequest.SerializeToString,
            response_deserializer=pb.Capabilities.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(pb.CapabilitiesRequest(), metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _assert_precise_refusal(caught.value).reason == "VERSION_MISMATCH"
