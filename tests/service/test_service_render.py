"""The service files and commands of all three systems, rendered on any system and
read back with the tools that will read them: ``systemd-analyze verify``, ``plistlib``,
an XML parser."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from fluidity.service.render import (
    LAUNCHD_LABEL,
    TASK_NAME,
    UNIT_NAME,
    Target,
    launchd_plist,
    plan,
    service_file,
    systemd_unit,
    task_xml,
)

TASK_NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
PYTHON = (sys.executable, "-m", "fluidity")


def linux(config: Path = Path("/home/ann/fluidity/agent.yaml")) -> Target:
    return Target("linux", PurePosixPath("/home/ann"), PYTHON, config)


def macos() -> Target:
    program = ("/Users/ann/.local/pipx/venvs/fluidity/bin/python", "-m", "fluidity")
    return Target(
        "macos", PurePosixPath("/Users/ann"), program, PurePosixPath("/Users/ann/agent.yaml"), 501
    )


def windows() -> Target:
    return Target(
        "windows",
        PureWindowsPath(r"C:\Users\Ann Lee"),
        (r"C:\Program Files\Fluidity\fluidity.exe",),
        PureWindowsPath(r"C:\Users\Ann Lee\fluidity\agent.yaml"),
        user=r"CORP\ann",
        local_app_data=PureWindowsPath(r"C:\Users\Ann Lee\AppData\Local"),
    )


def test_the_systemd_unit_restarts_on_failure_with_the_absolute_config() -> None:
    unit = systemd_unit(linux())
    assert (
        f"ExecStart={sys.executable} -m fluidity agent --config /home/ann/fluidity/agent.yaml\n"
        in unit
    )
    assert "Restart=on-failure\n" in unit
    assert "WantedBy=default.target\n" in unit
    assert service_file(linux()) == PurePosixPath("/home/ann/.config/systemd/user", UNIT_NAME)


def test_systemd_words_with_spaces_percent_and_dollar_are_escaped() -> None:
    unit = systemd_unit(linux(Path("/home/ann/my $HOME 100%/agent.yaml")))
    assert '--config "/home/ann/my $$HOME 100%%/agent.yaml"\n' in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    config = tmp_path / "agent config.yaml"
    config.write_text("server: 127.0.0.1:1\n")
    unit = tmp_path / UNIT_NAME
    unit.write_text(systemd_unit(linux(config)))
    # The system manager's checks (syntax, an executable ExecStart): a user manager
    # needs a user session, which a CI container has not.
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    broken = tmp_path / "broken" / UNIT_NAME
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert "restart specifier" in done.stderr  # the check can fail


def test_the_systemd_commands() -> None:
    user = ("systemctl", "--user")
    assert plan("install", linux()).commands == (
        (*user, "daemon-reload"),
        (*user, "enable", "--now", UNIT_NAME),
    )
    uninstall = plan("uninstall", linux())
    assert uninstall.commands == ((*user, "disable", "--now", UNIT_NAME), (*user, "daemon-reload"))
    assert uninstall.remove == (service_file(linux()),)
    assert plan("status", linux()).commands == ((*user, "status", "--no-pager", UNIT_NAME),)


def test_the_launchd_plist_runs_at_load_and_is_kept_alive() -> None:
    document = plistlib.loads(launchd_plist(macos()))
    assert document["Label"] == LAUNCHD_LABEL
    assert document["ProgramArguments"] == [
        *macos().program, "agent", "--config", "/Users/ann/agent.yaml"
    ]  # fmt: skip
    assert document["RunAtLoad"] is True
    assert document["KeepAlive"] == {"SuccessfulExit": False}
    assert document["StandardErrorPath"] == "/Users/ann/Library/Logs/fluidity-agent.log"
    path = service_file(macos())
    assert path == PurePosixPath(f"/Users/ann/Library/LaunchAgents/{LAUNCHD_LABEL}.plist")


def test_the_launchctl_commands() -> None:
    service = f"gui/501/{LAUNCHD_LABEL}"
    path = str(service_file(macos()))
    assert plan("install", macos()).commands == (
        ("launchctl", "bootout", service),
        ("launchctl", "bootstrap", "gui/501", path),
    )
    assert plan("uninstall", macos()).commands == (("launchctl", "bootout", service),)
    assert plan("status", macos()).commands == (("launchctl", "print", service),)


def test_the_scheduled_task_starts_at_logon_and_restarts() -> None:
    content = plan("install", windows()).write[0].content
    assert content.startswith(b"\xff\xfe")  # UTF-16 with its BOM, as schtasks reads it
    root = ET.fromstring(content.decode("utf-16").split("\n", 1)[1])
    logon = root.find("t:Triggers/t:LogonTrigger", TASK_NS)
    assert logon is not None
    assert logon.findtext("t:UserId", namespaces=TASK_NS) == r"CORP\ann"
    assert logon.findtext("t:Repetition/t:Interval", namespaces=TASK_NS) == "PT5M"
    settings = root.find("t:Settings", TASK_NS)
    assert settings is not None
    assert settings.findtext("t:RestartOnFailure/t:Interval", namespaces=TASK_NS) == "PT1M"
    assert settings.findtext("t:ExecutionTimeLimit", namespaces=TASK_NS) == "PT0S"
    assert settings.findtext("t:MultipleInstancesPolicy", namespaces=TASK_NS) == "IgnoreNew"
    exec_ = root.find("t:Actions/t:Exec", TASK_NS)
    assert exec_ is not None
    assert (
        exec_.findtext("t:Command", namespaces=TASK_NS) == r"C:\Program Files\Fluidity\fluidity.exe"
    )
    assert (
        exec_.findtext("t:Arguments", namespaces=TASK_NS)
        == r'agent --config "C:\Users\Ann Lee\fluidity\agent.yaml"'
    )


def test_the_task_xml_escapes_what_xml_needs() -> None:
    target = Target(
        "windows",
        PureWindowsPath("C:/Users/a"),
        ("C:/f&b/fluidity.exe",),
        PureWindowsPath("a.yaml"),
    )
    root = ET.fromstring(task_xml(target).split("\n", 1)[1])
    assert root.findtext("t:Actions/t:Exec/t:Command", namespaces=TASK_NS) == "C:/f&b/fluidity.exe"


def test_the_schtasks_commands() -> None:
    path = r"C:\Users\Ann Lee\AppData\Local\fluidity\fluidity-agent-task.xml"
    assert str(service_file(windows())) == path
    assert plan("install", windows()).commands == (
        ("schtasks", "/Create", "/TN", TASK_NAME, "/XML", path, "/F"),
        ("schtasks", "/Run", "/TN", TASK_NAME),
    )
    assert plan("uninstall", windows()).commands == (
        ("schtasks", "/End", "/TN", TASK_NAME),
        ("schtasks", "/Delete", "/TN", TASK_NAME, "/F"),
    )
    assert plan("status", windows()).commands == (
        ("schtasks", "/Query", "/TN", TASK_NAME, "/V", "/FO", "LIST"),
    )
