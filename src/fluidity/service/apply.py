"""``fluidity service install|uninstall|status``: carry out (or print) a service plan.

The thin, effectful half of the package: it fills in the :class:`Target` from
this machine (home, user, the running Python or one-file executable), checks
the config the service will run with, then writes the files of the plan and
runs its commands (``systemctl --user``, ``launchctl``, ``schtasks``), each
echoed as it runs. ``--dry-run`` prints the same files and commands instead.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from fluidity.config.agent import load_agent_config
from fluidity.errors import ConfigError
from fluidity.service.render import Action, FileToWrite, Plan, System, Target, plan

COMMAND_TIMEOUT = 60.0  # seconds; systemctl/launchctl/schtasks answer in well under one
_SYSTEMS: dict[str, System] = {"linux": "linux", "darwin": "macos", "win32": "windows"}


@dataclass(frozen=True)
class ServiceRequest:
    """The command line: action, agent config, ``--dry-run``, ``--platform``."""

    action: Action
    config: Path | None
    dry_run: bool = False
    platform: System | None = None


def run(request: ServiceRequest) -> int:
    """Carry out ``request``; 0 on success (``status``: the service is running)."""
    target = make_target(request)
    steps = plan(request.action, target)
    if request.dry_run:
        print(describe(steps, windows=target.system == "windows"), end="")
        return 0
    return carry_out(steps)


def this_system() -> System:
    """This machine's system; ``ConfigError`` where there is no service manager we know."""
    system = _SYSTEMS.get(sys.platform)
    if system is None:
        raise ConfigError(
            f"fluidity service supports Linux (systemd), macOS and Windows, not {sys.platform}; "
            "run fluidity agent from your own service manager instead"
        )
    return system


def make_target(request: ServiceRequest) -> Target:
    """The target for this machine (or, with --dry-run, for ``--platform``)."""
    system = request.platform or this_system()
    if not request.dry_run and system != this_system():
        raise ConfigError(
            f"--platform {system} is only for --dry-run: services are installed on the "
            "system they run on"
        )
    config = _config_path(request)
    windows = system == "windows"
    local = os.environ.get("LOCALAPPDATA")
    return Target(
        system=system,
        home=PureWindowsPath(Path.home()) if windows else Path.home(),
        program=program(),
        config=config,
        uid=os.getuid() if hasattr(os, "getuid") else 0,
        user=_user(),
        local_app_data=PureWindowsPath(local) if windows and local else None,
    )


def program() -> tuple[str, ...]:
    """How to start fluidity again: this one-file executable, or this Python with -m."""
    if getattr(sys, "frozen", False):
        return (sys.executable,)
    return (sys.executable, "-m", "fluidity")


def _config_path(request: ServiceRequest) -> Path:
    """The absolute path of a valid agent config (install), or of the one given."""
    if request.config is None:
        if request.action == "install":
            raise ConfigError("service install needs --config agent.yaml (the agent's config)")
        return Path("agent.yaml").absolute()
    path = request.config.expanduser().absolute()
    if request.action == "install":
        load_agent_config(path)  # refuse to install a service that could not start
    return path


def _user() -> str:
    domain = os.environ.get("USERDOMAIN")
    name = os.environ.get("USERNAME") or getpass.getuser()
    return f"{domain}\\{name}" if domain else name


def describe(steps: Plan, *, windows: bool = False) -> str:
    """The plan as text: each file with its content, then each command (quoted for
    the shell of the system: POSIX, or ``cmd.exe`` with ``windows``)."""
    join = subprocess.list2cmdline if windows else shlex.join
    lines: list[str] = []
    for item in steps.write:
        lines.append(f"would write {item.path} (mode {item.mode:04o}):")
        lines.extend(f"    {line}" for line in _text(item).splitlines())
    lines.extend(f"would run: {join(command)}" for command in steps.commands)
    lines.extend(f"would remove {path}" for path in steps.remove)
    return "".join(f"{line}\n" for line in lines)


def _text(item: FileToWrite) -> str:
    if item.content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return item.content.decode("utf-16")
    return item.content.decode()


def carry_out(steps: Plan) -> int:
    """Write, run, remove; stop at the first command that fails (unless tolerated)."""
    for item in steps.write:
        path = Path(item.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.content)
        path.chmod(item.mode)
        print(f"wrote {path}")
    status = 0
    for index, command in enumerate(steps.commands):
        status = _run(command)
        if status != 0 and index not in steps.tolerant:
            print(f"fluidity: {shlex.join(command)} failed (exit status {status})", file=sys.stderr)
            return 1
    for gone in steps.remove:
        Path(gone).unlink(missing_ok=True)
        print(f"removed {gone}")
    return 0 if status == 0 else 1


def _run(command: tuple[str, ...]) -> int:
    print(f"$ {shlex.join(command)}", flush=True)
    try:
        done = subprocess.run(command, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        print(f"fluidity: {command[0]} not found: is this system's service manager there?")
        return 127
    except subprocess.TimeoutExpired:
        print(f"fluidity: {command[0]} did not finish in {COMMAND_TIMEOUT:g} s")
        return 124
    return done.returncode
