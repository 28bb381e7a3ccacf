"""The ``fluidity`` command: argparse subcommands -> config -> ``runtime.run``.

Every command takes ``--log-level`` and ``--log-format`` (before or after its
name); logging is set up from them before the command runs, and ``agent`` and
``server`` set it up again from their config, where the flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from fluidity import __version__
from fluidity.errors import ConfigError, FluidityError
from fluidity.observe import logs
from fluidity.pki import cli as certs_cli

log = logging.getLogger("fluidity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluidity",
        description="An HTTP proxy on your laptop, carried over one mutually-authenticated "
        "TLS 1.3 connection to your own server.",
    )
    parser.add_argument("--version", action="version", version=f"fluidity {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_server_and_agent(sub)
    _add_quickstart(sub)
    _add_health(sub)
    _add_status(sub)
    _add_doctor(sub)
    _add_service(sub)
    certs_cli.add_parser(sub)
    _add_optional_commands(sub)
    _add_logging_options(parser)
    return parser


def _add_server_and_agent(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = sub.add_parser("server", help="run the server (in the cloud)")
    _add_common(server)
    server.set_defaults(func=_cmd_server)

    agent = sub.add_parser("agent", help="run the agent (the local proxy on your laptop)")
    _add_common(agent)
    agent.add_argument("--server", help="override the server address (host:port)")
    agent.add_argument(
        "--transport",
        choices=["direct", "websocket", "auto"],
        help="override transport: direct mTLS, mTLS inside a WebSocket, or auto-detect",
    )
    agent.set_defaults(func=_cmd_agent)


def _add_quickstart(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    quick = sub.add_parser(
        "quickstart", help="create certificates, run server and agent on this machine"
    )
    quick.add_argument(
        "--dir",
        type=Path,
        default=Path(".fluidity"),
        help="state directory for certificates (default: ./.fluidity)",
    )
    quick.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        help="the agent's proxy address (default: 127.0.0.1:8080)",
    )
    quick.add_argument(
        "--self-test",
        action="store_true",
        help="fetch a page from a built-in origin through the tunnel, then exit",
    )
    quick.set_defaults(func=_cmd_quickstart)


def _add_health(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser("health", help="exit 0 if the configured listener accepts TCP")
    group = health.add_mutually_exclusive_group()
    group.add_argument("--config", type=Path, help="server.yaml or agent.yaml")
    group.add_argument("--address", help="host:port to check")
    health.add_argument(
        "--role",
        choices=["server", "agent"],
        default="server",
        help="which config schema --config follows (default: server)",
    )
    health.set_defaults(func=_cmd_health)


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="ask the running agent how the tunnel is",
        description="Print the running agent's tunnel state, server, uptime, reconnects, "
        "active streams, traffic and last error.",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="the agent.yaml the agent runs with")
    where.add_argument("--address", help="the agent's host:port (default: 127.0.0.1:8080)")
    status.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument(
        "--interval", type=_positive, default=2.0, help="seconds between refreshes (default: 2)"
    )
    status.add_argument("--count", type=_positive_int, help="with --watch: stop after N refreshes")
    status.set_defaults(func=_cmd_status)


def _add_doctor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check a setup and say what is wrong and how to fix it",
        description="Check, in order: the config, key files, certificates, DNS, the corporate "
        "proxy, the TLS handshake (naming a TLS-inspecting proxy), the server's name and "
        "clock, and a request through the tunnel. One line each: ok, warning or problem "
        "with the fix. Exit status 1 if any check found a problem.",
    )
    doctor.add_argument("--config", type=Path, required=True, help="agent.yaml or server.yaml")
    doctor.add_argument(
        "--role",
        choices=["agent", "server"],
        help="which config it is (default: agent if it has a server: key, else server)",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    doctor.add_argument(
        "--target",
        default="https://example.com/",
        help="URL to fetch through the tunnel (default: https://example.com/; https: CONNECT)",
    )
    doctor.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds for each network check"
    )
    doctor.set_defaults(func=_cmd_doctor)


def _add_service(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = sub.add_parser(
        "service",
        help="run the agent at login: systemd user unit, launchd agent or scheduled task",
        description="Install, remove or show the agent as a service of this user: a systemd "
        "user unit (Linux), a launchd LaunchAgent (macOS) or a Task Scheduler task at logon "
        "(Windows), restarted when it fails.",
    )
    service.add_argument("action", choices=["install", "uninstall", "status"])
    service.add_argument(
        "--config", type=Path, help="the agent.yaml the service runs with (install: required)"
    )
    service.add_argument(
        "--dry-run", action="store_true", help="print the files and commands, change nothing"
    )
    service.add_argument(
        "--platform",
        choices=["linux", "macos", "windows"],
        help="with --dry-run: show another system's files (default: this one)",
    )
    service.set_defaults(func=_cmd_service)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    """--log-level/--log-format on ``parser`` and every command under it.

    SUPPRESS as the default: a subcommand that is not given the flag leaves the
    value given before the command name alone (argparse would reset it).
    """
    if not any(a.dest == "log_level" for a in parser._actions):
        parser.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            default=argparse.SUPPRESS,
            help="least severe message logged (default: info, or the config's)",
        )
        parser.add_argument(
            "--log-format",
            choices=["text", "json"],
            default=argparse.SUPPRESS,
            help="text lines or JSON objects (default: text, or the config's)",
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _add_logging_options(child)


def _add_optional_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    try:
        from fluidity.lifecycle import cli as cloud_cli
    except ImportError:  # pragma: no cover - the lifecycle package ships with fluidity
        return
    cloud_cli.add_parser(sub)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="YAML config file (without it, FLUIDITY_* variables alone)"
    )
    parser.add_argument("--listen", help="override the listen address (host:port)")


def _overrides(args: argparse.Namespace, *names: str) -> dict[str, object]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _cmd_server(args: argparse.Namespace) -> int:
    from fluidity import runtime
    from fluidity.config.server import load_server_config
    from fluidity.server.policyreload import ConfigFile
    from fluidity.server.server import Server

    overrides = _overrides(args, "listen", "log_level", "log_format")
    config = load_server_config(args.config, overrides=overrides)
    logs.setup_logging(config.log_level, config.log_format)
    # A reload reads the same layers again: the file, the environment, these flags.
    source = ConfigFile(args.config, lambda: load_server_config(args.config, overrides=overrides))

    async def main(stop: asyncio.Event) -> int:
        server = Server(config, source)
        await server.start()
        stop_reloading = runtime.on_reload_signal(lambda: server.reload("SIGHUP"))
        try:
            await server.serve(stop)
        finally:
            stop_reloading()
        return 0

    return runtime.run(main)


def _cmd_agent(args: argparse.Namespace) -> int:
    from fluidity import runtime
    from fluidity.agent import Agent
    from fluidity.agent.reload import reload_agent
    from fluidity.config.agent import load_agent_config

    overrides = _overrides(args, "listen", "server", "transport", "log_level", "log_format")
    config = load_agent_config(args.config, overrides=overrides)
    logs.setup_logging(config.log_level, config.log_format)

    async def main(stop: asyncio.Event) -> int:
        agent = Agent(config)
        await agent.start()
        # SIGHUP reads the same layers again: the file, the environment, these flags.
        stop_reloading = runtime.on_reload_signal(
            lambda: reload_agent(agent, lambda: load_agent_config(args.config, overrides=overrides))
        )
        try:
            await agent.serve(stop)
        finally:
            stop_reloading()
        return 0

    return runtime.run(main)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from fluidity import quickstart, runtime

    return runtime.run(
        lambda stop: quickstart.run(args.dir, args.listen, self_test=args.self_test, stop=stop)
    )


def _cmd_health(args: argparse.Namespace) -> int:
    from fluidity.config.agent import load_agent_config
    from fluidity.config.server import load_server_config
    from fluidity.config.values import Address

    if args.address:
        address = Address.parse(args.address)
    elif args.role == "agent":
        address = load_agent_config(args.config).listen
    else:
        address = load_server_config(args.config).listen
    host = "127.0.0.1" if address.host in ("0.0.0.0", "::", "") else address.host
    try:
        with socket.create_connection((host, address.port), timeout=3):
            return 0
    except OSError as exc:
        print(f"fluidity: unhealthy: {host}:{address.port}: {exc}", file=sys.stderr)
        return 1


def _cmd_status(args: argparse.Namespace) -> int:
    from fluidity.config.agent import load_agent_config
    from fluidity.config.values import Address
    from fluidity.observe import status

    if args.config is not None:
        target = status.StatusTarget.of(load_agent_config(args.config))
    else:
        target = status.StatusTarget.at(Address.parse(args.address or "127.0.0.1:8080"))
    options = status.WatchOptions(
        as_json=args.json, watch=args.watch, interval=args.interval, count=args.count
    )
    return status.run(target, options)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from fluidity.doctor.run import DoctorOptions, run

    if not hasattr(args, "log_level"):
        # the findings are the output: the in-process agent's own log lines are noise
        logging.getLogger("fluidity").setLevel(logging.CRITICAL)
    options = DoctorOptions(
        role=args.role, as_json=args.json, target=args.target, timeout=args.timeout
    )
    return run(args.config, options)


def _cmd_service(args: argparse.Namespace) -> int:
    from fluidity.service.apply import ServiceRequest, run

    request = ServiceRequest(args.action, args.config, args.dry_run, args.platform)
    return run(request)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        _report(f"config error: {exc}")
        return 2
    except FluidityError as exc:
        _report(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _report(message: str) -> None:
    """A failure, as a plain ``fluidity: ...`` line or, with JSON logs, one JSON record."""
    if logs.json_logging():
        log.error("%s", message)
    else:
        print(f"fluidity: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
