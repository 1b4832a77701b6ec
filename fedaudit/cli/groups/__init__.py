"""The `fedaudit` sub-commands, one module per command group.

Each module in this package defines `register(parsers: Parsers) -> None`, adds its
sub-parsers to the right group (`parsers.root`, `parsers.node` or `parsers.audit`) and
sets `handler=` (a function taking the parsed arguments and returning an exit code)
with `set_defaults`. The CLI finds the modules itself, so adding a command touches no
shared file.

Modules register in the order of their optional `ORDER` (lower first; modules without
one come after those with one), then by name. That order is the order of the commands
in `fedaudit --help` and `fedaudit node --help`: the everyday commands (demo, node,
audit) first, the rest alphabetically.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from fedaudit.cli.parsers import Parsers

DEFAULT_ORDER = 1000


def register_all(parsers: Parsers) -> None:
    """Import every command module of this package and let it add its sub-parsers."""
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
    ]
    for module in sorted(modules, key=_position):
        module.register(parsers)


def _position(module: ModuleType) -> tuple[int, str]:
    return getattr(module, "ORDER", DEFAULT_ORDER), module.__name__
