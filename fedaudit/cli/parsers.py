"""The sub-parser groups a command module adds its commands to.

`fedaudit node ...` and `fedaudit audit ...` are shared by several modules in
`fedaudit.cli.groups` (the node's own commands, `health`, `log`, `doctor`, ...), so no
single module can own them. They are created here on first use: the group then appears
in `fedaudit --help` where the first module that asks for it registers, which keeps
the order of the help listing in the hands of the registry's `ORDER`.

This module is apart from the registry (`fedaudit.cli.groups`) because every group
module imports it, while the registry imports every group module.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Parsers:
    """`root` for `fedaudit X`; `node` and `audit` for `fedaudit node X`, `fedaudit audit X`."""

    def __init__(self, root: SubParsers) -> None:
        self.root = root
        self._node: SubParsers | None = None
        self._audit: SubParsers | None = None

    @property
    def node(self) -> SubParsers:
        """`fedaudit node X`: operating a municipality's node."""
        if self._node is None:
            group = self.root.add_parser(
                "node",
                help="operate a municipality's node",
                description="Operate a municipality's node.",
            )
            self._node = group.add_subparsers(
                dest="node_command", metavar="NODE_COMMAND", required=True
            )
        return self._node

    @property
    def audit(self) -> SubParsers:
        """`fedaudit audit X`: running audit plans against nodes."""
        if self._audit is None:
            group = self.root.add_parser(
                "audit", help="run audits", description="Run audit plans against running nodes."
            )
            self._audit = group.add_subparsers(
                dest="audit_command", metavar="AUDIT_COMMAND", required=True
            )
        return self._audit
