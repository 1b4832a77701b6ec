"""Where the product's default audit plan (`fedaudit/plans/default.yaml`) is installed.

The demo runs this plan, tests and benchmarks audit with it, and operators copy it as a
starting point. It ships as package data of `fedaudit`, so it is found through
`importlib.resources` rather than a path relative to the source tree, which would not
exist in an installed wheel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def default_plan_path() -> Path:
    """The installed `default.yaml` audit plan (nodes empty: callers add them)."""
    return Path(str(resources.files("fedaudit") / "plans" / "default.yaml"))
