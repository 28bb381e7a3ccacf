"""Retry arithmetic without clocks or sleeps: exponential backoff and circuit breakers.

Callers pass the time in (``now``) and do the waiting themselves, so every
rule here is checked by plain unit tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum


@dataclass
class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(max, initial * 2**n)].

    Full jitter spreads reconnecting agents apart after a server restart
    instead of having them knock in lock-step.
    """

    initial: float
    maximum: float
    jitter: bool = True
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.maximum, self.initial * float(2 ** min(self.attempts, 62)))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to the maximum."""
        ceiling = self.ceiling()
        self.attempts += 1
        return self.rng.uniform(0, ceiling) if self.jitter else ceiling

    def reset(self) -> None:
        """Success: the next failure starts from ``initial`` again."""
        self.attempts = 0


class CircuitState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False


class CircuitBreaker:
    """One circuit per key (``host:port``).

    Closed: everything passes; ``failures`` consecutive failures open it.
    Open: everything fails fast until ``reset_after`` seconds have passed.
    Half-open: exactly one probe passes; its success closes the circuit,
    its failure opens it again for another ``reset_after``.
    """

    def __init__(self, failures: int = 5, reset_after: float = 30.0) -> None:
        self.threshold = failures
        self.reset_after = reset_after
        self._circuits: dict[str, _Circuit] = {}

    def state(self, key: str, now: float) -> CircuitState:
        circuit = self._circuits.get(key)
        if circuit is None or circuit.failures < self.threshold:
            return CircuitState.CLOSED
        if now - circuit.opened_at >= self.reset_after:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def allow(self, key: str, now: float) -> bool:
        """May a connection to ``key`` be tried now? Half-open admits a single probe."""
        match self.state(key, now):
            case CircuitState.CLOSED:
                return True
            case CircuitState.OPEN:
                return False
            case CircuitState.HALF_OPEN:
                circuit = self._circuits[key]
                if circuit.probing:
                    return False
                circuit.probing = True
                return True
        return False  # pragma: no cover - the match is exhaustive

    def record_success(self, key: str) -> None:
        """A connection succeeded: the circuit closes and its failure count starts over."""
        self._circuits.pop(key, None)

    def release(self, key: str) -> None:
        """An attempt ended with no verdict (cancelled): free the probe, change nothing else."""
        circuit = self._circuits.get(key)
        if circuit is not None:
            circuit.probing = False

    def record_failure(self, key: str, now: float) -> None:
        """A connection failed: one more consecutive failure; at the threshold the
        circuit opens (again, for a failed probe) for ``reset_after`` from ``now``."""
        circuit = self._circuits.setdefault(key, _Circuit())
        circuit.failures += 1
        circuit.probing = False
        if circuit.failures >= self.threshold:
            circuit.opened_at = now

    def states(self, now: float) -> dict[str, CircuitState]:
        """Every key that is not plainly closed, for metrics and status."""
        return {
            key: self.state(key, now)
            for key, circuit in self._circuits.items()
            if circuit.failures >= self.threshold
        }
