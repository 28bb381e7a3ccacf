"""The transport keys: agent ``transport`` and ``websocket``, server ``websocket``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluidity.config.agent import AgentConfig, load_agent_config
from fluidity.config.server import ServerConfig, ServerWebSocket, load_server_config
from fluidity.config.values import Address, WebSocketEndpoint
from fluidity.errors import ConfigError

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
AGENT = "server: tunnel.example.com:443\ntls: {ca: ca.pem, cert: a.pem, key: a.key}\n"
SERVER = "tls: {ca: ca.pem, cert: s.pem, key: s.key}\n"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    for name in ("ca.pem", "a.pem", "a.key", "s.pem", "s.key", "corp.pem", "pub.pem", "pub.key"):
        (tmp_path / name).write_text(PEM)
    return tmp_path


def agent(conf: Path, extra: str) -> AgentConfig:
    path = conf / "agent.yaml"
    path.write_text(AGENT + extra)
    return load_agent_config(path, env={})


def server(conf: Path, extra: str) -> ServerConfig:
    path = conf / "server.yaml"
    path.write_text(SERVER + extra)
    return load_server_config(path, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wss://tunnel.example.com/fluidity", (True, "tunnel.example.com", 443, "/fluidity")),
        ("wss://tunnel.example.com:8443/x/y", (True, "tunnel.example.com", 8443, "/x/y")),
        ("ws://10.0.0.5", (False, "10.0.0.5", 80, "/")),
        ("wss://[2001:db8::1]:443/f", (True, "2001:db8::1", 443, "/f")),
    ],
)
def test_websocket_urls_parse(text: str, expected: tuple[bool, str, int, str]) -> None:
    end = WebSocketEndpoint.parse(text)
    assert (end.secure, end.host, end.port, end.path) == expected
    assert end.name == end.host


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("https://tunnel.example.com/", "expected a URL like wss://"),
        ("tunnel.example.com/fluidity", "expected a URL like wss://"),
        ("wss://user:pw@tunnel.example.com/", "no credentials"),
        ("wss://tunnel.example.com/?a=b", "no credentials, query or fragment"),
        ("wss://tunnel.example.com:99999/", "port is not a number from 1 to 65535"),
    ],
)
def test_bad_websocket_urls_say_what_is_expected(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("?", r"\?")):
        WebSocketEndpoint.parse(text)


def test_the_agent_defaults_to_the_direct_transport(conf: Path) -> None:
    config = agent(conf, "")
    assert config.transport == "direct"
    assert config.websocket.url is None
    assert config.websocket.ping_interval == 10.0


def test_agent_websocket_section_reads_and_resolves_paths(conf: Path) -> None:
    config = agent(
        conf,
        "transport: auto\nwebsocket:\n  url: wss://ws.example.com/t\n  outer_ca: corp.pem\n"
        "  ping_interval: 0\n",
    )
    ws = config.websocket
    assert config.transport == "auto"
    assert str(ws.url) == "wss://ws.example.com:443/t"
    assert ws.outer_ca is not None and ws.outer_ca.path == conf / "corp.pem"
    assert ws.ping_interval == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("transport: tls\n", "transport: expected one of: direct, websocket, auto"),
        ("websocket: {url: 'http://x/'}\n", "websocket.url: expected a URL like wss://"),
        ("websocket: {outer_ca: nope.pem}\n", "websocket.outer_ca: file not found"),
        ("websocket: {ping_interval: -1}\n", "websocket.ping_interval"),
        ("websocket: {path: /x}\n", "websocket.path: unknown key"),
    ],
)
def test_agent_transport_errors_name_the_key(conf: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        agent(conf, extra)


def test_the_server_accepts_the_websocket_transport_by_default(conf: Path) -> None:
    ws = server(conf, "").websocket
    assert ws == ServerWebSocket(enabled=True, path="/fluidity", listen=None, cert=None, key=None)


def test_server_websocket_section_reads(conf: Path) -> None:
    ws = server(
        conf, "websocket: {path: /t, listen: '0.0.0.0:443', cert: pub.pem, key: pub.key}\n"
    ).websocket
    assert ws.path == "/t" and ws.listen == Address("0.0.0.0", 443)
    assert ws.cert is not None and ws.cert.path == conf / "pub.pem"
    assert ws.key is not None and ws.key.path == conf / "pub.key"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("websocket: {cert: pub.pem}\n", "websocket: set both cert and key, or neither"),
        ("websocket: {path: fluidity}\n", "websocket.path: expected a URL path like /fluidity"),
        (
            "websocket: {enabled: false, listen: '0.0.0.0:80'}\n",
            "websocket: enabled is false but listen or cert is set",
        ),
    ],
)
def test_server_websocket_errors_name_the_key(conf: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        server(conf, extra)


def test_the_transport_can_come_from_the_environment(conf: Path) -> None:
    path = conf / "agent.yaml"
    path.write_text(AGENT)
    env = {
        "FLUIDITY_AGENT__TRANSPORT": "websocket",
        "FLUIDITY_AGENT__WEBSOCKET__URL": "wss://lb.example.com/fluidity",
    }
    config = load_agent_config(path, env=env)
    assert config.transport == "websocket"
    assert config.websocket.url == WebSocketEndpoint(True, "lb.example.com", 443, "/fluidity")
