"""Sub-commands that live in modules of their own.

Each module in this package defines `register(parsers: Parsers) -> None`, adds its
sub-parsers to the right group and sets `handler=` (a function taking the parsed
arguments and returning an exit code) with `set_defaults`. The CLI finds the
modules itself, so adding a command touches no shared file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Parsers:
    """The sub-parser groups a module may add to: `fedaudit X`, `fedaudit node X`, `fedaudit audit X`."""

    root: argparse._SubParsersAction  # type: ignore[type-arg]
    node: argparse._SubParsersAction  # type: ignore[type-arg]
    audit: argparse._SubParsersAction  # type: ignore[type-arg]


def register_all(parsers: Parsers) -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{module.name}").register(parsers)
