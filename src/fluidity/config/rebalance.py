"""The ``rebalance:`` section of ``server.yaml``: shed tunnels above a count, on purpose.

A load balancer spreads *connections*, and an agent keeps its one tunnel for
hours: after a scale-out the old tasks keep their agents and the new ones get
only newcomers. With ``rebalance.enabled`` a server holding more than
``above`` tunnels asks a few of them (at most ``batch`` every ``interval``
seconds) to move: it refuses their new streams, which sends the agent through
the load balancer to a new tunnel at once, and closes the old one with GOAWAY
once its streams are done. Nothing is lost: the agent's open streams finish on
the old tunnel, and new ones wait for the new tunnel.

The server sees only its own count, so ``above`` stands for "many more than
the average": behind the stack's auto scaler, which keeps the average near
``TargetTunnelsPerTask``, about 1.5 times that target. Off by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fluidity.config.fields import Section
from fluidity.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class RebalanceConfig(Section):
    """Ask tunnels above ``above`` to move, ``batch`` at a time every ``interval`` s."""

    enabled: bool = False
    above: int = field(default=0, metadata={"min": 0})
    interval: float = field(default=30.0, metadata={"positive": True})
    batch: int = field(default=5, metadata={"min": 1})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.enabled and self.above < 1:
            raise ConfigError(
                "above: with enabled: true, set the tunnel count above which this server "
                "sheds tunnels (about 1.5 x the stack's TargetTunnelsPerTask)"
            )
