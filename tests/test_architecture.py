"""The rooms' dependency rules (docs/architecture.md), checked on the source.

Dependencies point one way: the CLI uses the coordinator and the node; the
coordinator uses the wire package, the shared `common` pieces and the node's public
domain types only; the node never imports the coordinator; nothing imports the CLI.
A new import against that direction, or a new import cycle between modules (lazy
imports inside functions count: they only move the cycle to run time), fails here
with the offending import named.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each room and the rooms it may import (besides itself). The first matching prefix wins,
# so more specific rooms come first.
ALLOWED: list[tuple[str, tuple[str, ...]]] = [
    ("fedaudit.wire", ()),
    ("fedaudit.node.domain", ()),
    ("fedaudit.node.errors", ()),
    ("fedaudit.common", ("fedaudit.wire", "fedaudit.node.domain", "fedaudit.node.errors")),
    ("fedaudit.pki", ()),
    ("fedaudit.synthetic", ()),
    ("fedaudit.logs", ()),
    ("fedaudit.audit_reports", ()),
    ("fedaudit.node", ("fedaudit.common", "fedaudit.wire", "fedaudit.pki")),
    # The hub relays envelopes; it holds no node or coordinator object.
    ("fedaudit.hub", ("fedaudit.common", "fedaudit.wire", "fedaudit.pki")),
    (
        "fedaudit.coordinator",
        (
            "fedaudit.common",
            "fedaudit.wire",
            "fedaudit.pki",
            "fedaudit.node.domain",
            "fedaudit.node.errors",
            "fedaudit.audit_reports",
        ),
    ),
    # The composition layer: wires node objects to coordinator interfaces.
    ("fedaudit.inprocess", ("fedaudit.node", "fedaudit.coordinator", "fedaudit.common")),
    (
        "fedaudit.cli",
        (
            "fedaudit.node",
            "fedaudit.coordinator",
            "fedaudit.common",
            "fedaudit.wire",
            "fedaudit.pki",
            "fedaudit.synthetic",
            "fedaudit.logs",
            "fedaudit.audit_reports",
            "fedaudit.inprocess",
            "fedaudit.hub",
        ),
    ),
]


def _package_dirs() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: ROOT / directory for package, directory in config["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    modules: dict[str, Path] = {}
    for package, directory in _package_dirs().items():
        for path in directory.rglob("*.py"):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def _imports(name: str, path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported fedaudit module, line, runtime?) for every import in a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = _type_checking_lines(tree)
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.append(full if full in MODULES else base)
        for target in targets:
            if target == "fedaudit" or target.startswith("fedaudit."):
                resolved = target
                while resolved not in MODULES and "." in resolved:
                    resolved = resolved.rsplit(".", 1)[0]
                yield resolved, node.lineno, node.lineno not in typing_only


def _room(module: str) -> tuple[str, tuple[str, ...]] | None:
    for prefix, allowed in ALLOWED:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, allowed
    return None


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_rules_see_the_whole_package() -> None:
    """Guards the guard: the module scan finds the rooms it is meant to check."""
    for expected in (
        "fedaudit.node.query.service",
        "fedaudit.node.server",
        "fedaudit.coordinator.running.audit",
        "fedaudit.cli.main",
        "fedaudit.common.mechanisms",
        "fedaudit.wire.v1.node_pb2",
    ):
        assert expected in MODULES
    edges = {(m, t) for m, p in MODULES.items() for t, _, _ in _imports(m, p)}
    assert ("fedaudit.node.server", "fedaudit.node.query.service") in edges
    assert len(MODULES) > 60


def test_every_module_belongs_to_a_room() -> None:
    homeless = [m for m in MODULES if m != "fedaudit" and _room(m) is None]
    assert not homeless, (
        f"give these modules a room in ALLOWED and docs/architecture.md: {homeless}"
    )


def test_imports_point_one_way() -> None:
    wrong = []
    for module, path in MODULES.items():
        room = _room(module)
        if room is None:
            continue
        prefix, allowed = room
        for target, line, _ in _imports(module, path):
            if target == "fedaudit" or _within(target, (prefix, *allowed)):
                continue
            rel = path.relative_to(ROOT)
            message = f"{rel}:{line}: {module} imports {target}"
            if message not in wrong:
                wrong.append(message)
    assert not wrong, "imports against the architecture:\n" + "\n".join(wrong)


def test_nothing_outside_the_cli_imports_it() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for module, path in MODULES.items()
        if not module.startswith("fedaudit.cli")
        for target, line, _ in _imports(module, path)
        if target.startswith("fedaudit.cli")
    ]
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, runtime in _imports(module, path):
            # a package's __init__ is imported by its children anyway: not a cycle edge
            if runtime and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_cycle_finder(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(graph) == expected
