"""``fluidity status``: rendering without sockets, then the real command against a real agent."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from fluidity.config.agent import AuthConfig
from fluidity.observe.status import format_bytes, format_duration, format_status
from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Tunnel, agent_yaml, start_tunnel
from support.origins import RecordingOrigin

CONNECTED = {
    "version": "0.1.0",
    "state": "connected",
    "server": "tunnel.example.com:8443",
    "listen": "127.0.0.1:8080",
    "uptime": 3725.2,
    "connected_for": 65.0,
    "reconnects": 2,
    "client_connections": 4,
    "streams": {"connect": 3, "forward": 1},
    "bytes_in": 5 * 1024**3 // 2,
    "bytes_out": 1536,
    "last_error": None,
    "metrics": None,
}


# -- rendering -----------------------------------------------------------------------------


def test_a_connected_agent_reads_at_a_glance() -> None:
    assert format_status(CONNECTED) == (
        "fluidity agent 0.1.0 on 127.0.0.1:8080, up 1 h 02 min\n"
        "  tunnel      connected to tunnel.example.com:8443 for 1 min 05 s\n"
        "  reconnects  2\n"
        "  streams     4 active: connect 3, forward 1\n"
        "  clients     4 local connections\n"
        "  traffic     in 2.5 GiB, out 1.5 KiB\n"
        "  last error  none"
    )


def test_a_refused_certificate_and_a_reconnecting_tunnel_say_so() -> None:
    refused = {**CONNECTED, "state": "auth failed", "last_error": "authentication failed: ..."}
    text = format_status(refused)
    assert "AUTH FAILED at tunnel.example.com:8443" in text
    assert "last error  authentication failed: ..." in text
    waiting = format_status({**CONNECTED, "state": "connecting", "streams": {}})
    assert "tunnel      connecting (tunnel.example.com:8443)" in waiting
    assert "streams     0 active" in waiting


def test_extra_tunnels_show_only_when_there_are_some() -> None:
    assert "tunnels" not in format_status({**CONNECTED, "tunnels": 1})
    text = format_status({**CONNECTED, "tunnels": 3})
    assert "  tunnels     3 connections to the server (max_tunnels)\n" in text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (3 * 1024**2, "3.0 MiB"),
        (2**50, "1024.0 TiB"),
    ],
)
def test_bytes_for_people(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.4, "0.4 s"),
        (12, "12 s"),
        (303, "5 min 03 s"),
        (7620, "2 h 07 min"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
    ],
)
def test_durations_for_people(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


# -- the command against a running agent -----------------------------------------------------


async def fluidity(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fluidity.cli",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


@pytest.fixture
async def open_connect(tunnel: Tunnel, origin: RecordingOrigin) -> AsyncIterator[None]:
    """One CONNECT stream held open through the agent while the test runs."""
    reader, writer = await asyncio.open_connection(LOOPBACK, tunnel.proxy_port)
    target = f"{LOOPBACK}:{origin.port}"
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    async with asyncio.timeout(10):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    yield
    writer.close()


async def test_status_of_a_running_agent(tunnel: Tunnel, open_connect: None) -> None:
    code, out, err = await fluidity("status", "--address", f"{LOOPBACK}:{tunnel.proxy_port}")
    assert code == 0, err
    server = f"{LOOPBACK}:{tunnel.server.address[1]}"  # type: ignore[index]
    assert f"on {LOOPBACK}:{tunnel.proxy_port}, up " in out
    assert f"tunnel      connected to {server} for " in out
    assert "streams     1 active: connect 1" in out
    assert "reconnects  0" in out


async def test_status_as_json_for_scripts(tunnel: Tunnel, open_connect: None) -> None:
    code, out, err = await fluidity(
        "status", "--json", "--address", f"{LOOPBACK}:{tunnel.proxy_port}"
    )
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "connected"
    assert status["streams"] == {"connect": 1}
    assert status["reconnects"] == 0 and status["last_error"] is None
    assert status["bytes_in"] >= 0 and status["bytes_out"] >= 0 and status["uptime"] >= 0
    assert {"server", "bytes_in", "connected_for", "event_loop"} <= status.keys()


async def test_watch_refreshes_a_bounded_number_of_times(tunnel: Tunnel) -> None:
    code, out, err = await fluidity(
        "status",
        "--watch",
        "--json",
        "--interval",
        "0.05",
        "--count",
        "3",
        "--address",
        f"{LOOPBACK}:{tunnel.proxy_port}",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["state"] for line in lines] == ["connected"] * 3


async def test_no_agent_is_a_clear_message_and_exit_1() -> None:
    port = await closed_port()
    code, out, err = await fluidity("status", "--address", f"{LOOPBACK}:{port}")
    assert code == 1
    assert err.strip() == (
        f"fluidity: error: no agent is listening on {LOOPBACK}:{port} "
        "(is `fluidity agent` running?)"
    )
    code, out, _ = await fluidity(
        "status", "--watch", "--count", "2", "--interval", "0.05", "--address", f"{LOOPBACK}:{port}"
    )
    assert code == 1
    assert out.count("no agent is listening") == 2


async def test_config_gives_the_address_and_the_credentials(
    pki: QuickstartPKI, tmp_path: Path
) -> None:
    auth = AuthConfig(username="alice", password="s3cret-pass")
    tunnel = await start_tunnel(pki, auth=auth)
    try:
        assert tunnel.server.address is not None
        listen = f"{LOOPBACK}:{tunnel.proxy_port}"
        right = agent_yaml(
            pki,
            tunnel.server.address[1],
            listen=listen,
            auth={"username": "alice", "password": "s3cret-pass"},
        )
        (tmp_path / "agent.yaml").write_text(yaml.safe_dump(right))
        code, out, err = await fluidity("status", "--config", str(tmp_path / "agent.yaml"))
        assert code == 0, err
        assert "connected to" in out
        code, _, err = await fluidity("status", "--address", listen)
        assert code == 1
        assert "wants its proxy credentials" in err
    finally:
        await tunnel.close()
