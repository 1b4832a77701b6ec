"""Exit codes, severities and the usage error every `fedaudit` command shares.

Kept in a module that imports nothing of the CLI, so every other CLI module can
depend on it without creating an import cycle.

Exit codes: 0 success; 1 the command ran and found something (findings at or above
`--fail-on`, a broken log, an unhealthy node); 2 usage or input error (a message says
what is wrong, nothing was written); 3 the audit was incomplete (failed, or partial
without `--allow-partial`; see `fedaudit.coordinator.running.outcome`); 70 an unexpected
internal error (a bug; `--debug` shows the traceback); 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_INPUT = 2
EXIT_INCOMPLETE = 3
EXIT_INTERNAL = 70
"""A bug (sysexits' EX_SOFTWARE): not 1, which a scheduler would read as findings."""
EXIT_INTERRUPTED = 130

SEVERITIES = ("info", "warning", "critical")
"""Finding severities, lowest first: `--fail-on X` fails on X and everything after it."""


class CliError(Exception):
    """A usage or input problem; printed without a traceback, exit code 2."""
