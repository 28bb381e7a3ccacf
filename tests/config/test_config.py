"""Loading, validating and overriding the agent and server configuration."""

from __future__ import annotations

import dataclasses
import re
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluidity.config.agent import (
    AgentConfig,
    AgentTLS,
    AuthConfig,
    ReconnectConfig,
    load_agent_config,
)
from fluidity.config.fields import Section
from fluidity.config.load import load_config
from fluidity.config.server import DialConfig, ServerConfig, ServerTLS, load_server_config
from fluidity.config.sources import env_name
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.config.values import Address, FileOrPem
from fluidity.errors import ConfigError

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

MINIMAL_SERVER = """\
tls:
  ca: ca.pem
  cert: server.pem
  key: server.key
"""
MINIMAL_AGENT = """\
server: tunnel.example.com:443
tls:
  ca: ca.pem
  cert: agent.pem
  key: agent.key
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config directory holding the PEM files the minimal configs name."""
    for name in ("ca.pem", "server.pem", "server.key", "agent.pem", "agent.key"):
        write(tmp_path, name, PEM)
    return tmp_path


def server_file(conf: Path, extra: str = "") -> Path:
    return write(conf, "server.yaml", MINIMAL_SERVER + extra)


def agent_file(conf: Path, extra: str = "") -> Path:
    return write(conf, "agent.yaml", MINIMAL_AGENT + extra)


def config_error(load: Any, *args: Any, **kwargs: Any) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as caught:
        load(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- valid files and defaults ----------------------------------------------------------------


def test_minimal_server_file_gets_every_default(conf: Path) -> None:
    config = load_server_config(server_file(conf), env={})
    tls = ServerTLS(
        ca=FileOrPem.from_path(conf / "ca.pem"),
        cert=FileOrPem.from_path(conf / "server.pem"),
        key=FileOrPem.from_path(conf / "server.key"),
    )
    assert config == ServerConfig(tls=tls)
    assert config.listen == Address("0.0.0.0", 8443)
    assert (config.dial.connect_timeout, config.dial.attempts) == (10.0, 3)
    assert (config.dial.backoff_initial, config.dial.backoff_max) == (0.1, 1.0)
    assert (config.circuit_breaker.failures, config.circuit_breaker.reset_after) == (5, 30.0)
    assert config.limits.max_tunnels == config.limits.max_streams_per_tunnel == 1000
    assert (config.limits.handshake_timeout, config.limits.stream_idle_timeout) == (10.0, 0.0)
    assert config.targets.allow == config.targets.deny == ()
    assert config.targets.ports == ()
    assert config.clients.allow == ()
    assert (config.keepalive_interval, config.keepalive_timeout, config.drain_timeout) == (
        15.0,
        10.0,
        20.0,
    )
    assert (config.tls.crl, config.metrics, config.log_level, config.log_format) == (
        None,
        None,
        "info",
        "text",
    )


def test_minimal_agent_file_gets_every_default(conf: Path) -> None:
    config = load_agent_config(agent_file(conf), env={})
    assert config.server == Address("tunnel.example.com", 443)
    assert config.server_hostname == "tunnel.example.com"
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.tls.cert.read_bytes() == PEM.encode()
    assert config.reconnect == ReconnectConfig(initial=0.5, max=30.0)
    assert (config.connect_wait, config.handshake_timeout, config.head_timeout) == (
        10.0,
        10.0,
        30.0,
    )
    assert (config.stream_idle_timeout, config.drain_timeout) == (0.0, 20.0)
    assert config.max_client_connections == 4096
    assert (config.auth, config.metrics, config.log_level, config.log_format) == (
        None,
        None,
        "info",
        "text",
    )


def test_a_full_server_file_sets_every_section(conf: Path) -> None:
    full = textwrap.dedent(
        """\
        listen: "[::]:443"
        targets: {allow: [10.0.0.0/8, example.com], deny: [10.9.0.0/16], ports: [443, 80]}
        clients: {allow: [alice]}
        dial: {connect_timeout: 2, attempts: 1, backoff_initial: 0, backoff_max: 0}
        circuit_breaker: {failures: 2, reset_after: 5}
        limits: {max_tunnels: 3, stream_idle_timeout: 60}
        metrics: 127.0.0.1:9100
        log_level: debug
        log_format: json
        """
    )
    config = load_server_config(server_file(conf, full), env={})
    assert config.listen == Address("::", 443)
    assert config.targets.allow == ("10.0.0.0/8", "example.com")
    assert config.targets.ports == (443, 80)
    assert config.clients.allow == ("alice",)
    assert config.dial == DialConfig(
        connect_timeout=2.0, attempts=1, backoff_initial=0, backoff_max=0
    )
    assert isinstance(config.dial.connect_timeout, float)
    assert (config.limits.max_tunnels, config.limits.max_streams_per_tunnel) == (3, 1000)
    assert config.metrics == Address("127.0.0.1", 9100)
    assert (config.log_level, config.log_format) == ("debug", "json")


def test_server_name_overrides_the_name_checked_in_the_certificate(conf: Path) -> None:
    config = load_agent_config(agent_file(conf, "server_name: tunnel.internal\n"), env={})
    assert config.server_hostname == "tunnel.internal"


def test_an_empty_file_is_an_empty_mapping(conf: Path) -> None:
    message = config_error(load_server_config, write(conf, "server.yaml", "# nothing yet\n"))
    assert message.startswith(f"{conf / 'server.yaml'}: tls.ca: missing required key")


# -- file paths and inline PEM ---------------------------------------------------------------


def test_paths_in_a_file_resolve_next_to_the_file(
    conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    write(etc, "certs/ca.pem", PEM)
    path = write(etc, "agent.yaml", MINIMAL_AGENT.replace("ca.pem", "certs/ca.pem"))
    for name in ("agent.pem", "agent.key"):
        write(etc, name, PEM)
    monkeypatch.chdir(conf)  # conf/ holds a different ca.pem; it must not be the one used
    config = load_agent_config(path, env={})
    assert config.tls.ca.path == etc / "certs" / "ca.pem"
    assert config.tls.ca.describe == str(etc / "certs" / "ca.pem")


def test_paths_from_the_environment_resolve_against_the_working_directory(
    conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    write(cwd, "mine.pem", PEM)
    monkeypatch.chdir(cwd)
    config = load_agent_config(agent_file(conf), env={"FLUIDITY_AGENT__TLS__CERT": "mine.pem"})
    assert config.tls.cert.path == cwd / "mine.pem"
    assert config.tls.key.path == conf / "agent.key"


def test_inline_pem_in_the_file_is_read_as_is(conf: Path) -> None:
    block = textwrap.indent(PEM, "    ")
    path = write(conf, "agent.yaml", MINIMAL_AGENT.replace(" ca.pem\n", f" |\n{block}"))
    config = load_agent_config(path, env={})
    assert config.tls.ca.read_bytes() == PEM.encode()
    assert config.tls.ca.describe == "inline PEM from tls.ca"


def test_inline_pem_from_the_environment_keeps_its_newlines(conf: Path) -> None:
    config = load_agent_config(agent_file(conf), env={"FLUIDITY_AGENT__TLS__KEY": PEM})
    assert config.tls.key.read_bytes() == PEM.encode()
    assert config.tls.key.describe == "inline PEM from tls.key"
    assert "MIIB" not in repr(config)


def test_inline_pem_cut_short_is_an_error(conf: Path) -> None:
    message = config_error(
        load_agent_config, agent_file(conf), env={"FLUIDITY_AGENT__TLS__KEY": PEM[:40]}
    )
    assert message.startswith("$FLUIDITY_AGENT__TLS__KEY: tls.key: inline PEM has no -----END")


def test_a_referenced_file_that_does_not_exist_is_named_with_its_absolute_path(
    conf: Path,
) -> None:
    (conf / "agent.key").unlink()
    message = config_error(load_agent_config, agent_file(conf))
    assert message == f"{conf / 'agent.yaml'}: tls.key: file not found: {conf / 'agent.key'}"


def test_a_referenced_directory_is_not_a_file(conf: Path) -> None:
    (conf / "crl").mkdir()
    message = config_error(load_server_config, server_file(conf, "  crl: crl\n"))
    assert message.endswith(f"tls.crl: not a readable file: {conf / 'crl'}")


# -- errors in the file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("  certt: x.pem\n", "tls.certt: unknown key; expected one of: ca, cert, key, crl"),
        ("listn: 0.0.0.0:1\n", "listn: unknown key; expected one of: listen, tls, targets"),
        ("dial: {attempts: three}\n", "dial.attempts: expected an integer >= 1, got 'three'"),
        ("dial: {attempts: 0}\n", "dial.attempts: expected an integer >= 1, got 0"),
        ("dial: {attempts: 2.5}\n", "dial.attempts: expected an integer >= 1, got 2.5"),
        ("dial: {connect_timeout: 0}\n", "dial.connect_timeout: expected a number > 0, got 0"),
        ("dial: {connect_timeout: .inf}\n", "dial.connect_timeout: expected a number > 0, got inf"),
        ("keepalive_interval: true\n", "keepalive_interval: expected a number > 0, got True"),
        ("drain_timeout: -1\n", "drain_timeout: expected a number >= 0, got -1"),
        ("dial: 5\n", "dial: expected a mapping with keys: connect_timeout, attempts"),
        ("targets: {ports: [443, 0]}\n", "targets.ports: expected a list of integers from 1 to"),
        ("targets: {ports: 443}\n", "targets.ports: expected a list of integers from 1 to 65535"),
        ("targets: {allow: [10.0.0.0/8, 7]}\n", "targets.allow: expected a list of strings, got"),
        ("clients: {allow: ['']}\n", "clients.allow: expected a list of strings, got ['']"),
        ("log_level: verbose\n", "log_level: expected one of: debug, info, warning, error, got"),
        ("log_format: 1\n", "log_format: expected one of: text, json, got 1"),
        ("listen: localhost\n", "listen: expected host:port (IPv6 as [addr]:port), got 'loc"),
        ("listen: localhost:http\n", "listen: expected host:port"),
        ("listen: localhost:65536\n", "listen: port must be from 0 to 65535, got 65536"),
        ("listen: [::1]:80\n", "not valid YAML"),
        ("listen: ['::1']\n", "listen: expected host:port (IPv6 as [addr]:port), got ['::1']; q"),
        ("metrics: ::1:9100\n", "metrics: expected host:port (IPv6 as [addr]:port), got '::1:91"),
        (
            "dial: {backoff_initial: 2}\n",
            "dial: backoff_max (1.0) is below backoff_initial (2.0); raise backoff_max",
        ),
    ],
)
def test_server_file_errors_name_the_key_and_the_fix(conf: Path, extra: str, expected: str) -> None:
    message = config_error(load_server_config, server_file(conf, extra))
    assert message.startswith(f"{conf / 'server.yaml'}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls: {ca: ca.pem, cert: agent.pem, key: agent.key}\n", "server: missing required key"),
        (MINIMAL_AGENT.replace("  key: agent.key\n", ""), "tls.key: missing required key"),
        ("server: x:1\ntls: {}\n", "tls.ca: missing required key; expected a file path or in"),
        ("server: x:1\n", "tls.ca: missing required key"),
        (MINIMAL_AGENT + "server_name: 443\n", "server_name: expected a non-empty string or null"),
        (MINIMAL_AGENT + "reconnect: {initial: 5, max: 1}\n", "reconnect: max (1.0) is below"),
        (MINIMAL_AGENT + "auth: {username: bob}\n", "auth: set exactly one of password and pass"),
        (MINIMAL_AGENT + "auth: {password: x}\n", "auth.username: missing required key"),
    ],
)
def test_agent_file_errors_name_the_key_and_the_fix(conf: Path, text: str, expected: str) -> None:
    message = config_error(load_agent_config, write(conf, "agent.yaml", text))
    assert message.startswith(f"{conf / 'agent.yaml'}: ")
    assert expected in message


def test_a_missing_key_names_the_environment_variable_that_could_set_it(conf: Path) -> None:
    message = config_error(load_agent_config, None)
    assert message == (
        "agent config: server: missing required key; "
        "expected host:port (IPv6 as [addr]:port); add it or set $FLUIDITY_AGENT__SERVER"
    )


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    message = config_error(load_server_config, tmp_path / "nope.yaml")
    assert message == f"{tmp_path / 'nope.yaml'}: config file not found ({tmp_path / 'nope.yaml'})"


def test_an_unreadable_config_file_says_why(tmp_path: Path) -> None:
    message = config_error(load_server_config, tmp_path)
    assert message == f"{tmp_path}: cannot read config file: Is a directory"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls:\n  ca: a\n cert: b\n", "line 3, column 2: not valid YAML"),
        ("listen: 1.2.3.4:5\nlisten: 1.2.3.4:6\n", "line 2, column 1: not valid YAML: duplicate"),
        ("tls: {ca: [}\n", "line 1, column 12: not valid YAML"),
        ("- listen\n- tls\n", "the top level must be a mapping of keys (like 'listen: host:port')"),
        ("just words\n", "the top level must be a mapping of keys"),
    ],
)
def test_a_file_that_is_not_a_yaml_mapping_is_an_error(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = config_error(load_server_config, write(tmp_path, "server.yaml", text))
    assert message.startswith(f"{tmp_path / 'server.yaml'}: {expected}")


# -- environment and overrides ---------------------------------------------------------------


def test_environment_sets_scalars_lists_and_nested_keys(conf: Path) -> None:
    env = {
        "FLUIDITY_SERVER__KEEPALIVE_INTERVAL": "5",
        "FLUIDITY_SERVER__TARGETS__ALLOW": '["127.0.0.0/8", example.com]',
        "FLUIDITY_SERVER__TARGETS__PORTS": "[80, 443]",
        "FLUIDITY_SERVER__DIAL__ATTEMPTS": "7",
        "FLUIDITY_SERVER__LISTEN": "[::1]:9443",
        "FLUIDITY_SERVER__CIRCUIT_BREAKER": "{failures: 9}",
        "FLUIDITY_AGENT__LISTEN": "not for the server",
        "FLUIDITY_SERVERX": "not under the prefix",
    }
    config = load_server_config(server_file(conf), env=env)
    assert config.keepalive_interval == 5.0
    assert config.targets.allow == ("127.0.0.0/8", "example.com")
    assert config.targets.ports == (80, 443)
    assert config.dial.attempts == 7
    assert config.listen == Address("::1", 9443)
    assert config.circuit_breaker.failures == 9


def test_environment_alone_can_configure_the_agent(
    conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(conf)
    env = {env_name("FLUIDITY_AGENT__", k): v for k, v in _AGENT_KEYS.items()}
    config = load_agent_config(None, env=env)
    assert config.server == Address("tunnel.example.com", 443)
    assert config.auth == AuthConfig(username="bob", password_env="PROXY_PASSWORD")


_AGENT_KEYS = {
    "server": "tunnel.example.com:443",
    "tls.ca": "ca.pem",
    "tls.cert": "agent.pem",
    "tls.key": "agent.key",
    "auth": "{username: bob, password_env: PROXY_PASSWORD}",
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("FLUIDITY_AGENT__TLS__CERTT", "tls.certt: unknown key; expected one of: ca, cert, key"),
        ("FLUIDITY_AGENT__KEEPALIVE", "keepalive: unknown key; expected one of: listen, server,"),
        ("FLUIDITY_AGENT__LISTEN__PORT", "listen.port: unknown key; listen has no sub-keys"),
        ("FLUIDITY_AGENT__TLS____CERT", "tls.: unknown key"),
        ("FLUIDITY_AGENT__", "empty key; expected one of: listen, server"),
    ],
)
def test_an_environment_name_that_maps_to_no_key_is_named(
    conf: Path, name: str, expected: str
) -> None:
    message = config_error(load_agent_config, agent_file(conf), env={name: "x"})
    assert message.startswith(f"${name}: {expected}")


def test_environment_values_are_checked_like_file_values(conf: Path) -> None:
    env = {"FLUIDITY_SERVER__DIAL__ATTEMPTS": "three"}
    message = config_error(load_server_config, server_file(conf), env=env)
    assert message == (
        "$FLUIDITY_SERVER__DIAL__ATTEMPTS: dial.attempts: expected an integer >= 1, got 'three'"
    )
    env = {"FLUIDITY_SERVER__TARGETS__ALLOW": "[10.0.0.0/8"}
    message = config_error(load_server_config, server_file(conf), env=env)
    assert message.startswith("$FLUIDITY_SERVER__TARGETS__ALLOW: targets.allow: not a YAML value")


def test_environment_null_clears_an_optional_key(conf: Path) -> None:
    path = agent_file(conf, "metrics: 127.0.0.1:9100\nserver_name: a.example\n")
    env = {"FLUIDITY_AGENT__METRICS": "null", "FLUIDITY_AGENT__SERVER_NAME": "~"}
    config = load_agent_config(path, env=env)
    assert (config.metrics, config.server_name) == (None, None)


def test_text_keys_take_environment_values_verbatim(conf: Path) -> None:
    env = {"FLUIDITY_AGENT__AUTH": "{username: bob, password: x}"}
    env["FLUIDITY_AGENT__AUTH__PASSWORD"] = "yes #not a comment: [x]"
    config = load_agent_config(agent_file(conf), env=env)
    assert config.auth is not None
    assert config.auth.resolve_password({}) == "yes #not a comment: [x]"


def test_precedence_is_file_then_environment_then_overrides(conf: Path) -> None:
    path = agent_file(conf, "keepalive_interval: 1\nconnect_wait: 1\nhead_timeout: 1\n")
    env = {"FLUIDITY_AGENT__CONNECT_WAIT": "2", "FLUIDITY_AGENT__HEAD_TIMEOUT": "2"}
    config = load_agent_config(path, env=env, overrides={"head_timeout": 3.0})
    assert (config.keepalive_interval, config.connect_wait, config.head_timeout) == (1, 2, 3)


def test_a_whole_section_can_be_replaced_and_a_deeper_key_wins(conf: Path) -> None:
    env = {
        "FLUIDITY_AGENT__RECONNECT": "{initial: 1, max: 2}",
        "FLUIDITY_AGENT__RECONNECT__MAX": "9",
    }
    config = load_agent_config(agent_file(conf, "reconnect: {initial: 4}\n"), env=env)
    assert config.reconnect == ReconnectConfig(initial=1.0, max=9.0)


def test_overrides_take_typed_values_text_or_none(conf: Path) -> None:
    overrides: dict[str, object] = {
        "listen": "127.0.0.1:65536",
        "tls.cert": conf / "agent.pem",
        "max_client_connections": "12",
        "server": Address("127.0.0.1", 9),
        "log_level": None,  # a flag that was not given
    }
    path = agent_file(conf, "log_level: debug\n")
    with pytest.raises(ConfigError, match=r"^command line: listen: port must be from 0 to 65535"):
        load_agent_config(path, env={}, overrides=overrides)
    overrides["listen"] = "127.0.0.1:1080"
    config = load_agent_config(path, env={}, overrides=overrides)
    assert (config.listen, config.server) == (Address("127.0.0.1", 1080), Address("127.0.0.1", 9))
    assert (config.max_client_connections, config.log_level) == (12, "debug")
    assert config.tls.cert.path == conf / "agent.pem"


def test_an_unknown_override_is_named(conf: Path) -> None:
    message = config_error(load_agent_config, agent_file(conf), overrides={"tls.certt": "x"})
    expected = "ca, cert, key, expiry_warning_days"
    assert message == f"command line: tls.certt: unknown key; expected one of: {expected}"


# -- secrets, immutability, construction in code ---------------------------------------------


def test_the_password_never_shows_in_repr_str_or_errors(conf: Path) -> None:
    path = agent_file(conf, "auth: {username: bob, password: hunter2}\n")
    config = load_agent_config(path, env={})
    assert config.auth is not None and config.auth.resolve_password() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)
    bad = agent_file(conf, "auth: {username: bob, password: 31337}\n")
    message = config_error(load_agent_config, bad)
    assert "31337" not in message
    assert "auth.password: expected a non-empty string or null, got a value of type int" in message


def test_password_env_is_read_when_resolved() -> None:
    auth = AuthConfig(username="bob", password_env="PROXY_PASSWORD")
    assert auth.resolve_password({"PROXY_PASSWORD": "s3"}) == "s3"
    with pytest.raises(ConfigError, match="environment variable PROXY_PASSWORD is not set"):
        auth.resolve_password({})


@pytest.mark.parametrize("kwargs", [{}, {"password": "a", "password_env": "B"}])
def test_auth_needs_exactly_one_password_source(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="exactly one of password and password_env"):
        AuthConfig(username="bob", **kwargs)


def test_upstream_proxy_and_direct_load_from_the_file(conf: Path) -> None:
    extra = (
        "upstream_proxy:\n"
        "  url: http://proxy.corp.example:3128\n"
        '  username: "CORP\\\\alice"\n'
        "  password: hunter2\n"
        'direct: ["*.corp.example", intranet, 10.0.0.0/8]\n'
    )
    config = load_agent_config(agent_file(conf, extra), env={})
    proxy = config.upstream_proxy
    assert proxy is not None and proxy.mode == "http"
    assert (proxy.username, proxy.password) == ("CORP\\alice", "hunter2")
    assert "hunter2" not in repr(config)
    assert config.direct == ("*.corp.example", "intranet", "10.0.0.0/8")
    assert config.routing.route("wiki.corp.example") == "direct"
    assert config.routing.route("10.1.2.3") == "direct"
    assert config.routing.route("example.com") == "tunnel"


def test_upstream_proxy_and_direct_from_the_environment(conf: Path) -> None:
    env = {
        "FLUIDITY_AGENT__UPSTREAM_PROXY__URL": "env",
        "FLUIDITY_AGENT__DIRECT": '["intranet", "192.0.2.0/24"]',
    }
    config = load_agent_config(agent_file(conf), env=env)
    assert config.upstream_proxy is not None and config.upstream_proxy.mode == "env"
    assert config.direct == ("intranet", "192.0.2.0/24")


def test_no_upstream_proxy_and_no_direct_by_default(conf: Path) -> None:
    config = load_agent_config(agent_file(conf), env={})
    assert config.upstream_proxy is None and config.direct == ()
    assert config.routing.route("127.0.0.1") == "tunnel"  # the tests' origins use the tunnel


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "upstream_proxy: {url: 'ftp://proxy:21'}\n",
            "upstream_proxy: url: 'ftp://proxy:21' is not supported; write http://",
        ),
        (
            "upstream_proxy: {url: env, password: x}\n",
            "upstream_proxy: username: required when a password is set",
        ),
        (
            "upstream_proxy: {url: env, username: a, password: x, password_env: Y}\n",
            "upstream_proxy: password, password_env: set one, not both",
        ),
        ("upstream_proxy: {username: a}\n", "upstream_proxy.url: missing required key"),
        ("upstream_proxy: {url: env, colour: red}\n", "upstream_proxy.colour: unknown key"),
        ("direct: [intranet, 'bad/x']\n", "direct[1]: 'bad/x' is not a network"),
        ("direct: intranet\n", "direct: expected a list of strings"),
    ],
)
def test_upstream_proxy_and_direct_errors_name_the_key(
    conf: Path, extra: str, message: str
) -> None:
    assert message in config_error(load_agent_config, agent_file(conf, extra))


def test_a_pac_url_without_pypac_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypac", None)  # as if the pac extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'fluidity\[pac\]'"):
        UpstreamProxyConfig("pac+http://wpad.corp.example/wpad.dat")
    assert UpstreamProxyConfig("http://proxy.corp.example:3128").mode == "http"


def test_configs_are_frozen(conf: Path) -> None:
    config = load_agent_config(agent_file(conf), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen = Address("0.0.0.0", 1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.reconnect.max = 1.0  # type: ignore[misc]
    assert isinstance(load_server_config(server_file(conf), env={}).targets.allow, tuple)


def test_configs_built_in_code_are_checked_too(conf: Path) -> None:
    tls = AgentTLS(
        ca=FileOrPem.from_path(conf / "ca.pem"),
        cert=FileOrPem.from_path(conf / "agent.pem"),
        key=FileOrPem.from_pem(PEM),
    )
    config = AgentConfig(server=Address("127.0.0.1", 8443), tls=tls, keepalive_interval=1)
    assert config.tls.key.describe == "inline PEM from code"
    with pytest.raises(ConfigError, match=r"^attempts: expected an integer >= 1, got 0$"):
        DialConfig(attempts=0)
    with pytest.raises(ConfigError, match=r"^max \(1\.0\) is below initial \(2\.0\)"):
        ReconnectConfig(initial=2.0, max=1.0)
    with pytest.raises(ConfigError, match="keepalive_interval: expected a number > 0, got -1"):
        AgentConfig(server=Address("127.0.0.1", 8443), tls=tls, keepalive_interval=-1)
    with pytest.raises(ConfigError, match="exactly one of path and pem"):
        FileOrPem()


def test_a_file_that_vanishes_after_loading_fails_with_its_path(conf: Path) -> None:
    config = load_agent_config(agent_file(conf), env={})
    (conf / "agent.pem").unlink()
    with pytest.raises(ConfigError, match=f"^{re.escape(str(conf / 'agent.pem'))}: cannot read"):
        config.tls.cert.read_bytes()


# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("tunnel.example.com:443", "tunnel.example.com", 443),
        ("[::1]:8443", "::1", 8443),
        ("[2001:db8::1]:1", "2001:db8::1", 1),
        ("127.0.0.1:0", "127.0.0.1", 0),  # a listener on any free port
    ],
)
def test_addresses_parse_and_print_back(text: str, host: str, port: int) -> None:
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    "text", ["", ":80", "host", "host:", "host:-1", "host:99999", "::1:80", "[::1]", "[x]:80"]
)
def test_malformed_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        Address.parse(text)


_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@settings(derandomize=True, database=None)
@given(
    host=st.one_of(
        st.ip_addresses().map(str), st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
    ),
    port=st.integers(0, 65535),
)
def test_any_address_survives_a_round_trip_through_text(host: str, port: int) -> None:
    assert Address.parse(str(Address(host, port))) == Address(host, port)


# -- the generic loader, with a section another module might plug in -----------------------


def _even(value: int) -> str | None:
    return None if value % 2 == 0 else f"must be even, got {value}"


@dataclass(frozen=True, kw_only=True)
class _Upstream(Section):
    enabled: bool = False
    mode: Literal["basic", "ntlm"] = "basic"
    delays: tuple[float, ...] = field(default=(), metadata={"non_negative": True})
    window: int = field(default=2, metadata={"check": _even})
    peers: tuple[Address, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _PluginConfig:
    name: str
    upstream: _Upstream | None = None


def test_a_new_section_is_loaded_from_its_field_alone(tmp_path: Path) -> None:
    text = "name: a\nupstream: {enabled: true, delays: [1, 0.5], peers: ['a:1', '[::1]:2']}\n"
    path = write(tmp_path, "x.yaml", text)
    env = {"FLUIDITY_PLUGIN__UPSTREAM__MODE": "ntlm", "FLUIDITY_PLUGIN__UPSTREAM__WINDOW": "4"}
    config = load_config(_PluginConfig, role="plugin", path=path, env=env, overrides=None)
    peers = (Address("a", 1), Address("::1", 2))
    expected = _Upstream(enabled=True, mode="ntlm", delays=(1.0, 0.5), window=4, peers=peers)
    assert config.upstream == expected
    bare = load_config(_PluginConfig, role="plugin", path=None, env={}, overrides={"name": "b"})
    assert bare == _PluginConfig(name="b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstream: {enabled: 1}", "upstream.enabled: expected true or false, got 1"),
        ("upstream: {enabled: 'yes'}", "upstream.enabled: expected true or false, got 'yes'"),
        ("upstream: {mode: basic2}", "upstream.mode: expected one of: basic, ntlm, got 'basic2'"),
        (
            "upstream: {delays: [1, -1]}",
            "upstream.delays: expected a list of numbers >= 0, got [1, -1]",
        ),
        ("upstream: {window: 3}", "upstream.window: must be even, got 3"),
        ("upstream: {peers: ['a:1', b]}", "upstream.peers[1]: expected host:port (IPv6 as"),
        ("upstream: {peers: ['a:1', 2]}", "upstream.peers[1]: expected host:port (IPv6 as"),
        (
            "upstream: []",
            "upstream: expected a mapping with keys: enabled, mode, delays, window, peers, got []",
        ),
        ("name: ''", "name: expected a non-empty string, got ''"),
        ("name: 7", "name: expected a non-empty string, got 7 (quote it in YAML)"),
        ("name: {a: 1}", "name: expected a non-empty string, got {'a': 1}"),
    ],
)
def test_a_new_section_gets_its_rules_checked(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "x.yaml", "name: a\n" * ("name" not in text) + text)
    with pytest.raises(ConfigError) as caught:
        load_config(_PluginConfig, role="plugin", path=path, env={}, overrides=None)
    assert str(caught.value).startswith(f"{path}: {expected}")


# -- the reference documentation -------------------------------------------------------------


def _keys(cls: Any, prefix: str = "") -> Iterator[str]:
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = next((a for a in getattr(tp, "__args__", ()) if dataclasses.is_dataclass(a)), tp)
        # Value types (Address, FileOrPem, WebSocketEndpoint) parse from one string.
        section = dataclasses.is_dataclass(inner) and not hasattr(inner, "from_config")
        yield prefix + f.name
        if section:
            yield from _keys(inner, f"{prefix}{f.name}.")


@pytest.mark.parametrize("cls", [AgentConfig, ServerConfig])
def test_the_reference_documents_every_key(cls: type) -> None:
    text = DOCS.read_text()
    missing = [key for key in _keys(cls) if f"`{key}`" not in text]
    assert missing == []


def test_the_examples_in_the_reference_load(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = DOCS.read_text()
    examples = re.findall(r"```yaml\n# (agent|server)\.yaml\n(.*?)```", text, flags=re.S)
    assert {role for role, _ in examples} == {"agent", "server"}
    monkeypatch.chdir(conf)
    for name in ("tls/ca.pem", "tls/agent.pem", "tls/agent.key", "tls/server.pem"):
        write(conf, name, PEM)
    write(conf, "tls/server.key", PEM)
    write(conf, "tls/crl.pem", PEM)
    for role, body in examples:
        path = write(conf, f"{role}.yaml", body)
        load = load_agent_config if role == "agent" else load_server_config
        assert load(path, env={}).log_level in ("debug", "info", "warning", "error")
