"""What the doctor found: one finding per check, printed as a line or as JSON.

A finding is ``ok``, ``warning`` (works now, needs attention soon: a certificate
expiring within 14 days, a clock a few seconds off) or ``problem`` (this stops
Fluidity from working; ``fix`` says what to change). The exit status is 1 when
any finding is a problem, else 0, so scripts can use ``fluidity doctor`` as a gate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import Enum


class Level(Enum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    """The verdict of one check: ``check`` names it (``certificates``, ``proxy``...),
    ``message`` says what was seen, ``fix`` what to do (empty when ``ok``)."""

    check: str
    level: Level
    message: str
    fix: str = ""

    @classmethod
    def ok(cls, check: str, message: str) -> Finding:
        return cls(check, Level.OK, message)

    @classmethod
    def warning(cls, check: str, message: str, fix: str) -> Finding:
        return cls(check, Level.WARNING, message, fix)

    @classmethod
    def problem(cls, check: str, message: str, fix: str) -> Finding:
        return cls(check, Level.PROBLEM, message, fix)

    def line(self) -> str:
        """``problem  certificates: ... -> fix: ...`` (the level padded to align)."""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.level.value:<8} {self.check}: {self.message}{fix}"

    def as_dict(self) -> dict[str, str]:
        data = asdict(self)
        data["level"] = self.level.value
        return data


def has_problem(findings: Iterable[Finding]) -> bool:
    return any(f.level is Level.PROBLEM for f in findings)


def exit_code(findings: Iterable[Finding]) -> int:
    """1 if any finding is a problem, else 0."""
    return 1 if has_problem(findings) else 0


def render_json(role: str, config: str, findings: list[Finding]) -> str:
    """One JSON object: the role, the config path, every finding and the overall verdict."""
    verdict = "problem" if has_problem(findings) else "ok"
    if verdict == "ok" and any(f.level is Level.WARNING for f in findings):
        verdict = "warning"
    document = {
        "role": role,
        "config": config,
        "result": verdict,
        "checks": [f.as_dict() for f in findings],
    }
    return json.dumps(document, indent=2)


def summary(findings: list[Finding]) -> str:
    """The closing line: counts of each level."""
    counts = {level: sum(f.level is level for f in findings) for level in Level}
    return (
        f"{counts[Level.OK]} ok, {counts[Level.WARNING]} warning(s), "
        f"{counts[Level.PROBLEM]} problem(s)"
    )
