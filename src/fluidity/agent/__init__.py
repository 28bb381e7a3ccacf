"""The agent: local proxy listener, tunnel keeper, client connections."""

from fluidity.agent.agent import Agent

__all__ = ["Agent"]
