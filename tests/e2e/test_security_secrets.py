"""Secrets stay out of the logs, and private keys others can read are refused.

Traffic full of secrets -- proxy credentials right and wrong, cookies,
``Authorization`` headers, query strings and paths -- runs through a real
agent and server while every logger records at INFO, then at DEBUG; the
captured text must contain none of them, nor any line of a private key.
Targets appear in logs as ``host:port`` only.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fluidity.config.agent import AuthConfig
from fluidity.pki.certs import QuickstartPKI
from support.harness import agent_yaml, server_yaml, start_tunnel
from support.origins import RecordingOrigin

WAIT = 10.0
PASSWORD = "pw-SECRET-1"
WRONG = "pw-WRONG-SECRET-2"
COOKIE = "COOKIE-SECRET-3"
BEARER = "BEARER-SECRET-4"
QUERY = "QUERY-SECRET-5"
PATH = "PATH-SECRET-6"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


SECRETS = [PASSWORD, WRONG, COOKIE, BEARER, QUERY, PATH, basic("alice", PASSWORD)]


async def send(port: int, request: str) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
    try:
        writer.write(request.encode())
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.transport.abort()


def requests(origin: RecordingOrigin, closed_port: int) -> list[tuple[str, bytes]]:
    good = f"Proxy-Authorization: Basic {basic('alice', PASSWORD)}\r\n"
    wrong = f"Proxy-Authorization: Basic {basic('alice', WRONG)}\r\n"
    secrets = f"Cookie: session={COOKIE}\r\nAuthorization: Bearer {BEARER}\r\n"
    close = "Connection: close\r\n\r\n"

    def get(url: str, auth: str) -> str:
        return f"GET {url} HTTP/1.1\r\nHost: h\r\n{auth}{secrets}{close}"

    return [
        (get(f"{origin.url}/{PATH}?token={QUERY}", good), b"HTTP/1.1 200 "),
        (get(f"{origin.url}/{PATH}?token={QUERY}", wrong), b"HTTP/1.1 407 "),
        (get(f"{origin.url}/{PATH}?token={QUERY}", ""), b"HTTP/1.1 407 "),
        (get(f"http://refused-target.localhost/?token={QUERY}", good), b"HTTP/1.1 403 "),
        (get(f"http://127.0.0.1:{closed_port}/{PATH}?token={QUERY}", good), b"HTTP/1.1 502 "),
        (f"GET {origin.url}/?token={QUERY} HTTP/1.1\r\nProxy-Authorization: {WRONG}\r\n\r\n", b""),
        (
            f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: h\r\n{good}{secrets}\r\n"
            + get(f"/{PATH}?token={QUERY}", ""),  # a request inside the tunnel
            b"HTTP/1.1 200 ",
        ),
    ]


def key_lines(pki: QuickstartPKI) -> list[str]:
    lines = []
    for key in (pki.client_key, pki.server_key):
        lines += [line for line in key.read_text().splitlines() if "-----" not in line]
    return lines


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG], ids=["info", "debug"])
async def test_no_secret_reaches_the_logs(
    pki: QuickstartPKI,
    origin: RecordingOrigin,
    caplog: pytest.LogCaptureFixture,
    unused_tcp_port: int,
    level: int,
) -> None:
    caplog.set_level(level)  # the root logger: fluidity, asyncio, h2, hpack, h11 alike
    auth = AuthConfig(username="alice", password=PASSWORD)
    tunnel = await start_tunnel(pki, auth=auth)
    try:
        for request, expected in requests(origin, unused_tcp_port):
            answer = await send(tunnel.proxy_port, request)
            assert answer.startswith(expected), (request, answer[:200])
    finally:
        await tunnel.close()
    text = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "CONNECT" in text or level == logging.INFO
    leaked = [s for s in SECRETS + key_lines(pki) if s in text or s.lower() in text.lower()]
    assert leaked == []
    assert "refused-target.localhost:80" in text, "targets are logged as host:port"


# -- private keys others can read -----------------------------------------------------------


@pytest.mark.parametrize("role", ["server", "agent"])
def test_the_programs_refuse_a_private_key_others_can_read(
    pki: QuickstartPKI, tmp_path: Path, role: str
) -> None:
    key = tmp_path / f"{role}.key"
    key.write_bytes((pki.server_key if role == "server" else pki.client_key).read_bytes())
    key.chmod(0o644)
    config = server_yaml(pki) if role == "server" else agent_yaml(pki, 1)
    config["tls"] = {**config["tls"], "key": str(key)}  # type: ignore[dict-item]
    (tmp_path / f"{role}.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "fluidity.cli", role, "--config", f"{role}.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"private key {key} (mode 0644) is readable by others; run: chmod 600 {key}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
