"""The `fedaudit` command: help everywhere, exit codes, precise input errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedaudit.cli.errors import EXIT_FINDINGS, EXIT_INCOMPLETE, EXIT_INPUT, EXIT_OK
from fedaudit.cli.groups.audit import exit_code_for
from fedaudit.cli.main import build_parser, main

FIXTURE_BUNDLE = Path(__file__).parent / "fixtures" / "bundle_small"

SUBCOMMANDS = [
    [],
    ["demo"],
    ["node"],
    ["node", "import"],
    ["node", "validate"],
    ["node", "serve"],
    ["node", "budget"],
    ["audit"],
    ["audit", "run"],
    ["audit", "preview"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "fedaudit")
def test_every_command_has_help(words, capsys) -> None:
    """`--help` works on the top level and on every sub-command and exits 0."""
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    assert "usage: fedaudit" in capsys.readouterr().out


def test_parser_knows_the_stable_entry_points() -> None:
    """The design's entry points parse: demo, node import/serve, audit run."""
    parser = build_parser()
    assert parser.parse_args(["demo", "--bundles", "a", "b", "--out", "o"]).bundles == [
        Path("a"),
        Path("b"),
    ]
    assert parser.parse_args(["node", "import", "dir", "--db", "x.db"]).bundle == Path("dir")
    assert (
        parser.parse_args(["audit", "run", "plan.yaml", "--fail-on", "warning"]).fail_on
        == "warning"
    )


def test_import_valid_bundle_then_budget_view(tmp_path, capsys) -> None:
    """A valid bundle imports (exit 0) and the budget view lists the policy's requesters."""
    db = tmp_path / "node.db"
    assert main(["node", "import", str(FIXTURE_BUNDLE), "--db", str(db)]) == EXIT_OK
    assert "imported data version v1-" in capsys.readouterr().out
    policy = Path(__file__).parent.parent / "deploy" / "policy.example.yaml"
    assert main(["node", "budget", "--db", str(db), "--policy", str(policy)]) == EXIT_OK
    assert "oversight-board" in capsys.readouterr().out


def test_import_invalid_bundle_lists_problems_and_writes_nothing(tmp_path, capsys) -> None:
    """A broken bundle exits 2 with `file:line: column: message` lines and an empty database."""
    bundle = tmp_path / "bundle"
    shutil.copytree(FIXTURE_BUNDLE, bundle)
    text = (bundle / "assessments.csv").read_text(encoding="utf-8").splitlines()
    text[1] = text[1].replace("pass", "passed", 1).replace("fail", "failed", 1)
    (bundle / "assessments.csv").write_text("\n".join(text) + "\n", encoding="utf-8")
    db = tmp_path / "node.db"
    assert main(["node", "import", str(bundle), "--db", str(db)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "assessments.csv:2: result:" in err
    assert "nothing was imported" in err
    assert main(["node", "validate", str(bundle)]) == EXIT_INPUT


def test_missing_bundle_directory_is_a_usage_error(tmp_path, capsys) -> None:
    """A path that is not a directory is named in a one-line error, exit 2."""
    assert (
        main(["node", "import", str(tmp_path / "nope"), "--db", str(tmp_path / "x.db")])
        == EXIT_INPUT
    )
    assert "not a directory" in capsys.readouterr().err


def test_serve_requires_tls_or_explicit_insecure(tmp_path, capsys) -> None:
    """Without TLS files or --insecure the node does not start; insecure is loopback only."""
    policy = Path(__file__).parent.parent / "deploy" / "policy.example.yaml"
    db = str(tmp_path / "n.db")
    assert main(["node", "serve", "--db", db, "--policy", str(policy)]) == EXIT_INPUT
    assert "--tls-cert" in capsys.readouterr().err
    assert (
        main(
            [
                "node",
                "serve",
                "--db",
                db,
                "--policy",
                str(policy),
                "--insecure",
                "--host",
                "0.0.0.0",
            ]
        )
        == EXIT_INPUT
    )
    assert "loopback" in capsys.readouterr().err


def test_bad_policy_file_is_named(tmp_path, capsys) -> None:
    """A policy with a typo is refused with the file and field named."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrequesters: {a: {rho_per_period: 1}}\nbudget: {period: week}\n")
    assert (
        main(
            ["node", "serve", "--db", str(tmp_path / "n.db"), "--policy", str(policy), "--insecure"]
        )
        == EXIT_INPUT
    )
    assert "policy.yaml" in capsys.readouterr().err


def test_bad_plan_is_refused_before_anything_is_sent(tmp_path, capsys) -> None:
    """An audit plan with an invalid cost is refused with file and field, exit 2."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: p\nrequester: r\nconfidence: 0.95\nnodes: [{name: M01, address: '127.0.0.1:1'}]\n"
        "checks: {pass_rates: {rho: .nan, tolerance: 0.1}}\n"
    )
    assert (
        main(["audit", "run", str(plan), "--insecure", "--out", str(tmp_path / "r")]) == EXIT_INPUT
    )
    err = capsys.readouterr().err
    assert "plan.yaml" in err
    assert "rho" in err
    assert not (tmp_path / "r").exists()


def test_insecure_audit_refuses_remote_nodes(tmp_path, capsys) -> None:
    """--insecure may only reach loopback nodes."""
    plan = Path(__file__).parent.parent / "fedaudit" / "plans" / "default.yaml"
    nodes = [
        "--node",
        "M01=10.1.2.3:50051",
        "--node",
        "M02=127.0.0.1:1",
        "--node",
        "M03=127.0.0.1:2",
    ]
    args = ["audit", "run", str(plan), "--insecure", *nodes]
    assert main(args) == EXIT_INPUT
    assert "10.1.2.3:50051" in capsys.readouterr().err


def test_malformed_node_option_is_explained(capsys) -> None:
    """--node must be NAME=HOST:PORT."""
    plan = Path(__file__).parent.parent / "fedaudit" / "plans" / "default.yaml"
    assert main(["audit", "run", str(plan), "--insecure", "--node", "M01"]) == EXIT_INPUT
    assert "NAME=HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "severities", "fail_on", "allow_partial", "expected"),
    [
        ("complete", [], "info", False, EXIT_OK),
        ("complete", ["warning"], None, False, EXIT_OK),
        ("complete", ["warning"], "warning", False, EXIT_FINDINGS),
        ("complete", ["warning"], "critical", False, EXIT_OK),
        ("complete", ["critical"], "warning", False, EXIT_FINDINGS),
        ("partial", [], None, False, EXIT_INCOMPLETE),
        ("partial", ["critical"], "warning", False, EXIT_INCOMPLETE),
        ("partial", [], "warning", True, EXIT_OK),
        ("partial", ["critical"], "warning", True, EXIT_FINDINGS),
        ("failed", [], None, False, EXIT_INCOMPLETE),
        ("failed", [], "warning", True, EXIT_INCOMPLETE),
    ],
)
def test_exit_code_follows_design_6_2(status, severities, fail_on, allow_partial, expected) -> None:
    """0 complete and clean, 1 a finding at --fail-on, 3 incomplete unless --allow-partial."""
    report = {"audit": {"status": status}, "findings": [{"severity": s} for s in severities]}
    assert exit_code_for(report, fail_on, allow_partial=allow_partial) == expected


def test_cli_and_coordinator_agree_on_exit_codes() -> None:
    """The scheduler reports the same numbers the CLI exits with."""
    from fedaudit.coordinator.running import outcome

    assert (outcome.EXIT_OK, outcome.EXIT_FINDINGS, outcome.EXIT_INCOMPLETE) == (
        EXIT_OK,
        EXIT_FINDINGS,
        EXIT_INCOMPLETE,
    )
