"""Running ``fluidity doctor``'s checks in the test's own event loop.

``write_yaml`` puts a config where the doctor reads it; ``diagnose`` runs every
check and returns the findings (the server under test runs in the same loop);
``by_check`` and ``levels`` make assertions on them short.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fluidity.doctor.files import Role
from fluidity.doctor.report import Finding, Level
from fluidity.doctor.run import DoctorOptions
from fluidity.doctor.run import diagnose as run_checks

TIMEOUT = 5.0  # seconds for each network check: everything is on loopback


def write_yaml(path: Path, document: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


async def diagnose(path: Path, role: Role = "agent", target: str = "") -> list[Finding]:
    found: list[Finding] = []
    options = DoctorOptions(role=role, target=target or "http://127.0.0.1:9/", timeout=TIMEOUT)
    await run_checks(path, role, options, found.append)
    return found


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def levels(findings: list[Finding], check: str) -> set[Level]:
    return {f.level for f in by_check(findings, check)}


def problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level is Level.PROBLEM]


def shown(findings: list[Finding]) -> str:
    """Every finding as its printed line, for assertion messages."""
    return "\n".join(f.line() for f in findings)
