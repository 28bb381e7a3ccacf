"""``fluidity cloud wake|status|kill``: drive the control plane from a terminal.

The URLs come from the ``lifecycle:`` section of ``agent.yaml`` (``--config``),
and flags override it, so the commands also work without an agent config::

    fluidity cloud wake   --config agent.yaml        # wake and wait until ready
    fluidity cloud status --query-url https://….lambda-url.eu-west-1.on.aws/
    fluidity cloud kill   --config agent.yaml

Exit status: 0 done, 1 the control plane failed or timed out, 2 a configuration
problem (no URL, no credentials).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fluidity.errors import ConfigError, FluidityError
from fluidity.lifecycle.client import ControlPlaneClient, LifecycleConfig, UrllibTransport
from fluidity.observe import progress


def add_parser(subparsers: Any) -> None:
    """Register ``cloud`` and its subcommands on the main parser's ``subparsers``.

    Each subcommand sets ``func`` to a callable ``(args) -> int`` (the exit status).
    """
    cloud = subparsers.add_parser("cloud", help="wake, query or stop the server on AWS")
    commands = cloud.add_subparsers(dest="cloud_command", metavar="COMMAND", required=True)
    wake = commands.add_parser("wake", help="start the server and wait until it is ready")
    wake.add_argument(
        "--no-wait", action="store_true", help="ask for the server and return at once"
    )
    wake.set_defaults(func=run_wake)
    status = commands.add_parser(
        "status", help="print stopped, starting or ready ADDRESS, and the running tasks"
    )
    status.set_defaults(func=run_status)
    kill = commands.add_parser("kill", help="scale the server to zero now")
    kill.set_defaults(func=run_kill)
    for command in (wake, status, kill):
        _add_common(command)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="agent.yaml", help="read the lifecycle: section")
    parser.add_argument("--wake-url", help="the stack's WakeUrl output")
    parser.add_argument("--query-url", help="the stack's QueryUrl output")
    parser.add_argument("--kill-url", help="the stack's KillUrl output")
    parser.add_argument("--region", help="AWS region (default: from the URL)")
    parser.add_argument("--timeout", type=float, help="seconds to wait for ready")
    parser.add_argument(
        "--proxy", metavar="URL", help="HTTP proxy to reach AWS through (e.g. the corporate one)"
    )


def run_wake(args: argparse.Namespace) -> int:
    async def main(client: ControlPlaneClient) -> None:
        if args.no_wait:
            print((await client.wake()).status.value)
            return
        print(await client.wait_until_ready(progress.report))

    return _run(args, main)


def run_status(args: argparse.Namespace) -> int:
    async def main(client: ControlPlaneClient) -> None:
        status = await client.query()
        tasks = None if status.tasks is None else f"({status.tasks} running)"
        print(" ".join(filter(None, (status.status.value, status.address, tasks))))

    return _run(args, main)


def run_kill(args: argparse.Namespace) -> int:
    async def main(client: ControlPlaneClient) -> None:
        print((await client.kill()).status.value)

    return _run(args, main)


def _run(
    args: argparse.Namespace, main: Callable[[ControlPlaneClient], Coroutine[Any, Any, None]]
) -> int:
    """Build the client from config and flags, run ``main(client)``, map errors to codes."""
    try:
        client = ControlPlaneClient(
            lifecycle_config(args), transport=UrllibTransport(proxy=args.proxy)
        )
        asyncio.run(main(client))
    except ConfigError as exc:
        progress.report(f"fluidity cloud: {exc}", error=True)
        return 2
    except FluidityError as exc:
        progress.report(f"fluidity cloud: {exc}", error=True)
        return 1
    return 0


def lifecycle_config(args: argparse.Namespace) -> LifecycleConfig:
    """The ``lifecycle:`` section of ``--config`` (if any) with the flags laid over it."""
    base = _from_agent_config(args.config) if args.config else None
    overrides = {
        "wake_url": args.wake_url,
        "query_url": args.query_url,
        "kill_url": args.kill_url,
        "region": args.region,
        "ready_timeout": args.timeout,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    if base is not None:
        return dataclasses.replace(base, **given)
    missing = [f"--{k.replace('_', '-')}" for k in ("wake_url", "query_url") if k not in given]
    if missing:
        raise ConfigError(
            f"no lifecycle URLs: pass {' and '.join(missing)}, or --config agent.yaml "
            "with a lifecycle: section (the stack outputs WakeUrl, QueryUrl, KillUrl)"
        )
    return LifecycleConfig(**given)


def _from_agent_config(path: str) -> LifecycleConfig:
    """``lifecycle`` from ``fluidity.config.agent.load_agent_config(path)``.

    Imported by name: the config loader is a sibling module that may not have the
    ``lifecycle`` field (or may not exist) in every build.
    """
    try:
        config_module = importlib.import_module("fluidity.config.agent")
    except ImportError as exc:
        raise ConfigError(
            "--config needs fluidity.config.agent, which this build lacks; pass --wake-url, "
            "--query-url and --kill-url instead"
        ) from exc
    agent_config = config_module.load_agent_config(Path(path))
    lifecycle = getattr(agent_config, "lifecycle", None)
    if not isinstance(lifecycle, LifecycleConfig):
        raise ConfigError(
            f"{path}: no lifecycle: section; add wake_url and query_url (the stack outputs) "
            "or pass --wake-url and --query-url"
        )
    return lifecycle
