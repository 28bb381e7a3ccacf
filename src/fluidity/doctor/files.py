"""The checks that need no network: the config file and the private key files.

Both reuse what the agent and server do at start: ``fluidity.config`` loads and
validates (a ``ConfigError`` already names the key and the fix) and
``fluidity.pki.keyfiles`` judges a key file's permissions, so the doctor says
exactly what ``fluidity agent`` would refuse, before it is run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fluidity.config.agent import AgentConfig, load_agent_config
from fluidity.config.server import ServerConfig, load_server_config
from fluidity.config.sources import read_yaml_mapping
from fluidity.config.values import FileOrPem
from fluidity.doctor.report import Finding
from fluidity.errors import CertificateError, ConfigError
from fluidity.pki.keyfiles import check_private_key_file

Role = Literal["agent", "server"]
Config = AgentConfig | ServerConfig


def detect_role(path: Path) -> Role:
    """``agent`` for a file with a top-level ``server:`` (where the agent connects to),
    else ``server``. Raises ``ConfigError`` if the file cannot be read as YAML."""
    return "agent" if "server" in read_yaml_mapping(path) else "server"


def load(role: Role, path: Path) -> tuple[Config | None, Finding]:
    """The config and the ``config`` finding; no config when it is invalid."""
    try:
        config: Config = (load_agent_config if role == "agent" else load_server_config)(path)
    except ConfigError as exc:
        return None, Finding.problem(
            "config",
            f"{path} is not a valid {role} config: {exc}",
            f"correct {path} as the message says (docs/configuration.md lists every key)",
        )
    return config, Finding.ok("config", f"{path} is a valid {role} config")


def private_keys(config: Config) -> list[tuple[str, FileOrPem]]:
    """The config's private keys with their keys in the file (``tls.key``...)."""
    keys: list[tuple[str, FileOrPem]] = [("tls.key", config.tls.key)]
    if isinstance(config, ServerConfig) and config.websocket.key is not None:
        keys.append(("websocket.key", config.websocket.key))
    return keys


def key_permissions(config: Config) -> list[Finding]:
    """One finding per private key file: owner-only (0600) or a problem with the chmod."""
    findings = []
    for key, source in private_keys(config):
        if source.path is None:
            findings.append(Finding.ok("key file", f"{key} is inline PEM ({source.describe})"))
            continue
        try:
            check_private_key_file(source.path)
        except CertificateError as exc:
            # the message ends with "; run: chmod 600 PATH": that is the fix
            message, _, command = str(exc).partition("; run: ")
            fix = command or f"check {key}"
            findings.append(Finding.problem("key file", f"{key}: {message}", fix))
            continue
        findings.append(Finding.ok("key file", f"{key} {source.path} is private to its owner"))
    return findings
