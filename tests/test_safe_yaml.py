"""The shared YAML loader: alias bombs, deep nesting, huge files and duplicate keys are refused fast.

Regression for attack 6 of issue 10: a 1 KB alias bomb in the policy hung `node serve`
(25 s, 1.5 GB and climbing). Policies and plans now load through one loader with limits.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedaudit.cli.errors import EXIT_INPUT
from fedaudit.cli.main import main
from fedaudit.common.safe_yaml import (
    MAX_ALIASES,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_EXPANDED_NODES,
    YamlError,
    expanded_size,
    load_yaml,
)
from fedaudit.coordinator.errors import PlanError
from fedaudit.coordinator.planning.plan import load_plan
from fedaudit.node.errors import PolicyError
from fedaudit.node.privacy.policy import load_policy

POLICY_HEAD = (
    "version: 1\n"
    "budget: {period: year, node_rho_total: 1, max_rho_per_request: 0.1}\n"
    "requesters:\n"
    "  board: {rho_per_period: 0.5}\n"
)


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each anchor is a list of `width` aliases of the one before."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _small_bomb() -> str:
    """Fewer aliases than the alias limit, still expanding to millions of values."""
    lines = ['b0: &b0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 12):
        lines.append(
            f"b{level}: &b{level} [*b{level - 1}, *b{level - 1}, *b{level - 1}, *b{level - 1}]"
        )
    return "\n".join(lines) + "\n"


def _many_aliases() -> str:
    """Harmless values, but more alias uses than any policy or plan needs."""
    return "x: &x 1\nys: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"


def test_the_bomb_is_small_and_would_be_huge() -> None:
    """The test documents are what they claim: about 1 KB, billions of values once expanded."""
    assert len(_bomb().encode()) < 1100
    assert 9**8 > 40_000_000
    assert _small_bomb().count("*") < MAX_ALIASES
    assert 8 * 4**11 > 30_000_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_bomb(), f"more than {MAX_EXPANDED_NODES} values"),
        (_small_bomb(), f"more than {MAX_EXPANDED_NODES} values"),
        (_many_aliases(), f"more than {MAX_ALIASES} aliases"),
    ],
)
def test_alias_bombs_are_refused_in_well_under_a_second(
    tmp_path: Path, text: str, message: str
) -> None:
    """In a policy and in a plan: a clear error naming the file, in milliseconds."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_HEAD + text, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(
        PolicyError, match=rf"policy\.yaml: line \d+, column \d+: refused: .*{message}"
    ):
        load_policy(policy)
    assert time.perf_counter() - started < 0.5

    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\nrequester: r\n" + text, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(PlanError, match=rf"plan\.yaml: line \d+, column \d+: refused: .*{message}"):
        load_plan(plan)
    assert time.perf_counter() - started < 0.5


def test_node_serve_refuses_a_bomb_policy_at_once(tmp_path: Path, capsys) -> None:
    """`node serve` with the bomb exits 2 (usage) at start-up instead of hanging."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_HEAD + _bomb(), encoding="utf-8")
    args = ["node", "serve", "--db", str(tmp_path / "n.db"), "--policy", str(policy), "--insecure"]
    assert main(args) == EXIT_INPUT  # the first call also imports the node's modules
    assert "(an alias bomb?)" in capsys.readouterr().err
    started = time.perf_counter()
    assert main(args) == EXIT_INPUT
    elapsed = time.perf_counter() - started
    assert "(an alias bomb?)" in capsys.readouterr().err
    assert elapsed < 0.5
    assert not (tmp_path / "n.db").exists()  # nothing was created


def test_deep_nesting_and_size_are_limited() -> None:
    deep = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    with pytest.raises(YamlError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_yaml(deep)
    fine = "a: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2) + "\n"
    assert load_yaml(fine) is not None
    with pytest.raises(YamlError, match=f"larger than {MAX_BYTES} bytes"):
        load_yaml("# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(YamlError, match="not UTF-8"):
        load_yaml(b"a: \xff\n")


def test_duplicate_keys_and_syntax_errors_name_the_line() -> None:
    with pytest.raises(YamlError, match=r"line 2, column 1: invalid YAML: duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n")
    with pytest.raises(YamlError, match=r"line \d+, column \d+: invalid YAML"):
        load_yaml("a: [1, 2\nb: 3\n")
    with pytest.raises(YamlError, match="special characters are not allowed"):
        load_yaml("\x1f")
    with pytest.raises(YamlError, match="unhashable key"):
        load_yaml("? [1]\n: 2\n")


def test_ordinary_anchors_still_work() -> None:
    """A few anchors for shared settings are fine; merge keys too."""
    text = (
        "base: &base {rho: 0.05, confidence: 0.95}\n"
        "pass_rates: *base\n"
        "employment: {<<: *base, rho: 0.1}\n"
    )
    assert load_yaml(text) == {
        "base": {"rho": 0.05, "confidence": 0.95},
        "pass_rates": {"rho": 0.05, "confidence": 0.95},
        "employment": {"rho": 0.1, "confidence": 0.95},
    }
    assert load_yaml("") is None


def test_expanded_size_counts_aliases_without_expanding() -> None:
    """Linear in the composed graph: a 9-level bomb is measured (and capped) instantly."""
    import yaml

    node = yaml.compose("x: &x [1, 2]\ny: [*x, *x]\n")
    # mapping + 2 keys + x (list + 2) + y (list + 2 x (list + 2))
    assert expanded_size(node) == 1 + 2 + 3 + 1 + 2 * 3
    started = time.perf_counter()
    assert expanded_size(yaml.compose(_bomb())) == MAX_EXPANDED_NODES + 1
    assert time.perf_counter() - started < 0.1
