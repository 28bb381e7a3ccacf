"""What a service installation writes and runs, computed without touching anything.

``plan(action, target)`` returns a :class:`Plan`: the files to write (path,
content, mode), the files to remove, and the commands to run, in order. The
three systems, each starting the agent at the user's login and again when it
fails:

- Linux: a systemd *user* unit ``~/.config/systemd/user/fluidity-agent.service``
  (``Restart=on-failure``), enabled and started with ``systemctl --user``;
- macOS: a LaunchAgent ``~/Library/LaunchAgents/org.fluidity.agent.plist``
  (``RunAtLoad``, ``KeepAlive`` while it exits unsuccessfully), loaded with
  ``launchctl bootstrap gui/UID``;
- Windows: a Task Scheduler task ``Fluidity Agent`` from an XML definition
  (a logon trigger, ``RestartOnFailure``), created with ``schtasks /Create /XML``.

Everything here is pure (the home directory, user id and program are given),
so every system's files are tested on any system. The agent runs as
``<python> -m fluidity agent --config <absolute path>``, or ``<executable>
agent --config ...`` for a one-file build.
"""

from __future__ import annotations

import plistlib
import subprocess
from dataclasses import dataclass, field
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Literal
from xml.sax.saxutils import escape

System = Literal["linux", "macos", "windows"]
Action = Literal["install", "uninstall", "status"]

UNIT_NAME = "fluidity-agent.service"
LAUNCHD_LABEL = "org.fluidity.agent"
TASK_NAME = "Fluidity Agent"
Command = tuple[str, ...]
RESTART_DELAY = 5  # seconds (systemd, launchd); Task Scheduler's shortest is 1 minute


@dataclass(frozen=True)
class Target:
    """Where and how: the system, the user's home (and, on Windows, local app data
    directory and account), the user id (macOS), the program's argv prefix and the
    agent config's absolute path."""

    system: System
    home: PurePath
    program: tuple[str, ...]
    config: PurePath
    uid: int = 0
    user: str = ""
    local_app_data: PurePath | None = None

    @property
    def argv(self) -> tuple[str, ...]:
        """The agent's full command line."""
        return (*self.program, "agent", "--config", str(self.config))


@dataclass(frozen=True)
class FileToWrite:
    path: PurePath
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Plan:
    """Files to write, then commands to run; ``remove`` after the commands (uninstall).
    ``check`` commands may fail without stopping the rest (a service not loaded yet)."""

    write: tuple[FileToWrite, ...] = ()
    commands: tuple[Command, ...] = ()
    remove: tuple[PurePath, ...] = ()
    tolerant: frozenset[int] = field(default_factory=frozenset)


def service_file(target: Target) -> PurePath:
    """The file that defines the service on ``target.system``."""
    if target.system == "linux":
        return PurePosixPath(target.home, ".config/systemd/user", UNIT_NAME)
    if target.system == "macos":
        return PurePosixPath(target.home, "Library/LaunchAgents", f"{LAUNCHD_LABEL}.plist")
    base = target.local_app_data or PureWindowsPath(target.home, "AppData", "Local")
    return PureWindowsPath(base, "fluidity", "fluidity-agent-task.xml")


def plan(action: Action, target: Target) -> Plan:
    """What ``fluidity service ACTION`` does on ``target``."""
    path = service_file(target)
    if target.system == "linux":
        return _systemd(action, target, path)
    if target.system == "macos":
        return _launchd(action, target, path)
    return _schtasks(action, target, path)


def _systemd(action: Action, target: Target, path: PurePath) -> Plan:
    ctl = ("systemctl", "--user")
    if action == "install":
        unit = FileToWrite(path, systemd_unit(target).encode())
        return Plan((unit,), ((*ctl, "daemon-reload"), (*ctl, "enable", "--now", UNIT_NAME)))
    if action == "uninstall":
        commands = ((*ctl, "disable", "--now", UNIT_NAME), (*ctl, "daemon-reload"))
        return Plan(commands=commands, remove=(path,), tolerant=frozenset({0}))
    return Plan(commands=((*ctl, "status", "--no-pager", UNIT_NAME),), tolerant=frozenset({0}))


def systemd_unit(target: Target) -> str:
    """The user unit: the agent, restarted 5 s after it fails, started at login."""
    command = " ".join(_systemd_quote(arg) for arg in target.argv)
    return (
        "[Unit]\n"
        "Description=Fluidity agent (local HTTP proxy through the tunnel)\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={command}\n"
        "Restart=on-failure\n"
        f"RestartSec={RESTART_DELAY}\n"
        "# the agent logs to stderr: the journal keeps it (journalctl --user -u "
        f"{UNIT_NAME})\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def _systemd_quote(arg: str) -> str:
    """One ExecStart word: specifiers (%) and variables ($) escaped, quoted if needed."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("%", "%%").replace("$", "$$")
    needs_quotes = not arg or any(c.isspace() or c in "\"'\\;" for c in arg)
    return f'"{escaped}"' if needs_quotes else escaped


def _launchd(action: Action, target: Target, path: PurePath) -> Plan:
    domain = f"gui/{target.uid}"
    service = f"{domain}/{LAUNCHD_LABEL}"
    if action == "install":
        plist = FileToWrite(path, launchd_plist(target))
        # bootout first: a plist loaded before is not replaced by bootstrap
        commands = (
            ("launchctl", "bootout", service),
            ("launchctl", "bootstrap", domain, str(path)),
        )
        return Plan((plist,), commands, tolerant=frozenset({0}))
    if action == "uninstall":
        return Plan(
            commands=(("launchctl", "bootout", service),), remove=(path,), tolerant=frozenset({0})
        )
    return Plan(commands=(("launchctl", "print", service),), tolerant=frozenset({0}))


def launchd_plist(target: Target) -> bytes:
    """The LaunchAgent: run at load (login), kept alive while it exits with a failure."""
    logs = PurePosixPath(target.home, "Library/Logs/fluidity-agent.log")
    document = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": list(target.argv),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_DELAY,
        "ProcessType": "Background",
        "StandardOutPath": str(logs),
        "StandardErrorPath": str(logs),
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
    }
    return plistlib.dumps(document)


def _schtasks(action: Action, target: Target, path: PurePath) -> Plan:
    name = ("/TN", TASK_NAME)
    if action == "install":
        task = FileToWrite(path, task_xml(target).encode("utf-16"))
        commands: tuple[Command, ...] = (
            ("schtasks", "/Create", *name, "/XML", str(path), "/F"),
            ("schtasks", "/Run", *name),
        )
        return Plan((task,), commands)
    if action == "uninstall":
        commands = (("schtasks", "/End", *name), ("schtasks", "/Delete", *name, "/F"))
        return Plan(commands=commands, remove=(path,), tolerant=frozenset({0}))
    return Plan(
        commands=(("schtasks", "/Query", *name, "/V", "/FO", "LIST"),), tolerant=frozenset({0})
    )


def task_xml(target: Target) -> str:
    """The scheduled task: at the user's logon, no time limit, restarted when it fails.

    ``RestartOnFailure`` covers a task that fails to start; an agent that exits is
    started again by the logon trigger's 5-minute repetition, which
    ``MultipleInstancesPolicy IgnoreNew`` turns into a no-op while it runs.
    """
    program, *arguments = target.argv
    user = escape(target.user)
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>Fluidity agent (local HTTP proxy through the tunnel)</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <UserId>{user}</UserId>
      <Repetition>
        <Interval>PT5M</Interval>
        <StopAtDurationEnd>false</StopAtDurationEnd>
      </Repetition>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <StartWhenAvailable>true</StartWhenAvailable>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(program)}</Command>
      <Arguments>{escape(subprocess.list2cmdline(arguments))}</Arguments>
    </Exec>
  </Actions>
</Task>
"""
