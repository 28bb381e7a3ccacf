"""Checking that a library's internals still have the shape a patch was written for.

``h2fast`` and ``h2patch`` replace internals of h2 and hyperframe. Before they
do, they compare what they replace with what they expect (names, signatures,
answers on samples) and keep the library's own code when anything differs.
"""

from __future__ import annotations

import inspect
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def parameter_names(function: Any) -> list[str]:
    """The names of ``function``'s parameters, or ``[]`` when it has no signature."""
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return []


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``, for a log line."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "(unknown version)"
