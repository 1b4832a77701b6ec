"""Terminal output shared by the commands: the consoles, the audit progress bar and summary.

Results go to stdout (`console`) so they can be piped; progress, warnings and problems
go to stderr (`err_console`). `audit run` and `demo` show the same progress bar and
summary, which is why those live here rather than with either command.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

PIPE_WIDTH = 1000
"""Columns assumed when output is not a terminal: lines and tables are never wrapped or cut."""


def _console(*, stderr: bool) -> Console:
    """A console that wraps for a person at a terminal and never for a pipe, file or log.

    Rich lays out for 80 columns when it is not writing to a terminal, which breaks a
    `validate` problem line in the middle and cuts table cells ("reque…"); scripts and
    log collectors need one record per line, whole.
    """
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=PIPE_WIDTH)


console = _console(stderr=False)
err_console = _console(stderr=True)


def rho_text(rho: float) -> str:
    """A budget amount as every table shows it: six significant digits, no float noise.

    The ledger counts in exact units of 1e-12 rho and sums such as 0.39 come back as
    0.390000000002; `--json` keeps the exact value, people read 0.39.
    """
    return f"{rho:.6g}"


ProgressCallback = Callable[[str, str], None]
"""What `run_audit` calls after each node event: (node name, event)."""


@contextmanager
def progress_reporter(total: int, *, quiet: bool) -> Iterator[ProgressCallback | None]:
    """A rich progress bar fed by the audit's per-query callback (None with `quiet`).

    The audit answers nodes from several threads, so updates are serialised with a lock.
    """
    if quiet:
        yield None
        return
    with Progress(
        TextColumn("[bold]audit[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task("querying nodes", total=total)
        lock = threading.Lock()

        def on_event(node: str, event: str) -> None:
            with lock:
                progress.update(task, advance=1, description=f"{node}: {event}")

        yield on_event


def print_summary(report: Mapping[str, Any]) -> None:
    """Print what the audit can say, its coverage and findings: what is read before the HTML.

    The first line is the verdict (`outcome.verdict`): a failed or partial audit says so
    before anything else, and never reads as "no gap found". Findings come most severe
    first; nodes that did not answer show the reason in words.
    """
    from fedaudit.coordinator.running.outcome import verdict

    audit = report["audit"]
    status = audit["status"]
    style = {"complete": "bold green", "partial": "bold yellow", "failed": "bold red"}[status]
    console.print(f"\n[bold]{audit['plan']}[/] ({audit['run_id']}): [{style}]{status}[/]")
    console.print(Text(verdict(report)), soft_wrap=True)
    cov = Table(title="Coverage", show_lines=False)
    for col in ("node", "status", "why"):
        cov.add_column(col, overflow="fold")
    for n in report["coverage"]["nodes"]:
        why = n.get("message") or n["reason"] or ""
        if n["reason"] and n.get("message") and n["reason"] not in why:
            why = f"{n['reason']}: {why}"
        cov.add_row(n["node"], n["status"], why)
    console.print(cov)
    dup = report.get("duplicates") or {}
    if dup.get("status") in ("failed", "partial"):
        console.print(Text(f"Duplicate detection {dup['status']}: {dup['reason']}"), soft_wrap=True)
    for item in report.get("not_assessable") or []:
        console.print(
            Text(f"not assessable: {item['check']} {item['where']}: {item['reason']}"),
            soft_wrap=True,
        )
    findings = report["findings"]
    if not findings:
        return
    ec = audit.get("error_control") or {}
    console.print(
        f"\n[bold]Findings[/] ({len(findings)}, most severe first; {ec.get('tests', 0)} tests, "
        f"{ec.get('method', '')} correction, {audit['confidence']:.0%} confidence audit-wide)"
    )
    styles = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
    for f in findings:
        subject = ", ".join(str(v) for v in f["subject"].values() if v) or "whole region"
        console.print(
            f"[{styles.get(f['severity'], '')}]{f['severity']:>8}[/] {f['kind']} ({subject})"
        )
        console.print(Padding(Text(f["summary"]), (0, 0, 0, 9), expand=False))
        if f.get("next_step"):
            console.print(Padding(Text(f"next step: {f['next_step']}"), (0, 0, 0, 9), expand=False))
