"""Corporate networks end to end: the tunnel through squid, SOCKS5, split routing, /proxy.pac.

A real server and agent run in this loop; curl is the client; squid (tests/support/squidfix.py)
is the corporate proxy, with Basic (basic_ncsa_auth) or NTLM (ntlm_fake_auth). Squid
writes an access log line when a CONNECT ends, so tests that read it close the tunnel
first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pypac.parser import PACFile  # type: ignore[import-untyped]

from fluidity.config.agent import AuthConfig
from fluidity.config.server import TargetsConfig
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.pki.certs import QuickstartPKI
from support.harness import Process, Tunnel, agent_yaml, server_yaml, start_process, start_tunnel
from support.origins import RecordingOrigin
from support.squidfix import Squid, requires_squid, run_squid

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

WAIT = 15.0  # seconds: the bound on every wait in this file
POLL = 0.02  # seconds between looks at a log another process writes


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    """Run curl (no proxy from the environment) and return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        str(WAIT),
        "--noproxy",
        "",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT + 5):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def wait_for(condition: str, check: object) -> None:
    """Poll ``check()`` (state another task or process changes) until true, bounded."""
    assert callable(check)
    async with asyncio.timeout(WAIT):
        for _ in range(int(WAIT / POLL) + 1):
            if check():
                return
            await asyncio.sleep(POLL)
    raise AssertionError(f"timed out waiting for {condition}")


def log_lines(squid: Squid, *needles: str) -> list[str]:
    return [line for line in squid.access_log().splitlines() if all(n in line for n in needles)]


@pytest.fixture(scope="module")
def squid_basic() -> Iterator[Squid]:
    with run_squid(basic_users={"alice": "s3cret"}) as squid:
        yield squid


@pytest.fixture(scope="module")
def squid_ntlm() -> Iterator[Squid]:
    with run_squid(ntlm=True) as squid:
        yield squid


@pytest.fixture
async def closing() -> AsyncIterator[list[Tunnel]]:
    """Tunnels a test starts itself, closed at its end whatever happens."""
    tunnels: list[Tunnel] = []
    yield tunnels
    for tunnel in tunnels:
        await tunnel.close()


# -- the tunnel through the corporate proxy -------------------------------------------


@requires_squid
async def test_the_tunnel_runs_through_squid_with_basic(
    pki: QuickstartPKI, squid_basic: Squid, origin: RecordingOrigin, closing: list[Tunnel]
) -> None:
    # The credentials ride in the URL this time; the status page masks the password.
    proxy = UpstreamProxyConfig(f"http://alice:s3cret@127.0.0.1:{squid_basic.port}")
    tunnel = await start_tunnel(pki, upstream_proxy=proxy)
    closing.append(tunnel)
    conn = tunnel.agent.keeper.connection
    assert conn is not None and conn.peer_address == ("127.0.0.1", squid_basic.port)

    code, out, err = await curl("-x", tunnel.proxy, f"{origin.url}/through-squid")
    assert (code, out) == (0, b"hello"), err
    assert origin.heads[-1].startswith(b"GET /through-squid HTTP/1.1\r\n")
    code, out, err = await curl(f"http://127.0.0.1:{tunnel.proxy_port}/fluidity/status")
    status = json.loads(out)
    assert status["upstream_proxy"] == f"http://alice:***@127.0.0.1:{squid_basic.port}"
    assert status["state"] == "connected"

    server_port = tunnel.server.address[1] if tunnel.server.address else 0
    await tunnel.close()
    closing.clear()
    await wait_for("squid's log of the CONNECT", lambda: log_lines(squid_basic, "TCP_TUNNEL"))
    [line] = log_lines(squid_basic, f"CONNECT 127.0.0.1:{server_port}", "TCP_TUNNEL/200")
    assert " alice " in line


@requires_squid
async def test_the_tunnel_runs_through_squid_with_ntlm(
    pki: QuickstartPKI, squid_ntlm: Squid, origin: RecordingOrigin, closing: list[Tunnel]
) -> None:
    proxy = UpstreamProxyConfig(squid_ntlm.url, username="CORP\\alice", password="pa55word")
    tunnel = await start_tunnel(pki, upstream_proxy=proxy)
    closing.append(tunnel)

    code, out, err = await curl("-x", tunnel.proxy, "--proxytunnel", f"{origin.url}/ntlm")
    assert (code, out) == (0, b"hello"), err

    server_port = tunnel.server.address[1] if tunnel.server.address else 0
    await tunnel.close()
    closing.clear()
    needles = (f"CONNECT 127.0.0.1:{server_port}", "TCP_TUNNEL/200")
    await wait_for("squid's log of the NTLM CONNECT", lambda: log_lines(squid_ntlm, *needles))


@requires_squid
async def test_a_wrong_proxy_password_is_logged_answered_503_and_retried(
    pki: QuickstartPKI,
    squid_basic: Squid,
    origin: RecordingOrigin,
    closing: list[Tunnel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fluidity.agent.keeper")
    proxy = UpstreamProxyConfig(squid_basic.url, username="alice", password="wrong")
    tunnel = await start_tunnel(pki, upstream_proxy=proxy, connect_wait=0.5, wait_ready=False)
    closing.append(tunnel)

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if "answered 407" in r.getMessage()]

    await wait_for("three refused attempts", lambda: len(refusals()) >= 3)
    assert f"proxy 127.0.0.1:{squid_basic.port} answered 407 to CONNECT" in refusals()[0]
    assert "it offers Basic" in refusals()[0]
    assert "credentials for alice were refused" in refusals()[0]
    assert "reconnecting in" in refusals()[0]

    code, out, err = await curl("-x", tunnel.proxy, "-i", f"{origin.url}/never")
    assert code == 0, err
    assert out.startswith(b"HTTP/1.1 503"), out
    assert b"answered 407" in out
    assert origin.heads == []
    before = len(refusals())
    await wait_for("one more attempt", lambda: len(refusals()) > before)
    assert tunnel.agent.keeper.connection is None
    assert log_lines(squid_basic, "TCP_DENIED/407", "CONNECT 127.0.0.1:")


@requires_squid
async def test_direct_hosts_go_through_squid_too(
    pki: QuickstartPKI, squid_basic: Squid, origin: RecordingOrigin, closing: list[Tunnel]
) -> None:
    proxy = UpstreamProxyConfig(squid_basic.url, username="alice", password="s3cret")
    tunnel = await start_tunnel(
        pki,
        upstream_proxy=proxy,
        direct=("127.0.0.1",),
        server_changes={"targets": _deny_all_targets()},
    )
    closing.append(tunnel)

    code, out, err = await curl("-x", tunnel.proxy, f"{origin.url}/intranet")
    assert (code, out) == (0, b"hello"), err
    needles = (f"CONNECT 127.0.0.1:{origin.port}", "TCP_TUNNEL/200", " alice ")
    await wait_for("squid's log of the direct CONNECT", lambda: log_lines(squid_basic, *needles))


@requires_squid
async def test_a_pac_file_is_evaluated_again_on_reconnect(
    pki: QuickstartPKI,
    squid_basic: Squid,
    origin: RecordingOrigin,
    closing: list[Tunnel],
    tmp_path: Path,
) -> None:
    pac = tmp_path / "proxy.pac"
    pac.write_text(
        f'function FindProxyForURL(url, host) {{ return "PROXY 127.0.0.1:{squid_basic.port}"; }}'
    )
    proxy = UpstreamProxyConfig(f"pac+{pac.as_uri()}", username="alice", password="s3cret")
    tunnel = await start_tunnel(pki, upstream_proxy=proxy)
    closing.append(tunnel)
    first = tunnel.agent.keeper.connection
    assert first is not None and first.peer_address == ("127.0.0.1", squid_basic.port)

    pac.write_text('function FindProxyForURL(url, host) { return "DIRECT"; }')
    first.close_now("test: the network changed")
    await wait_for("a new connection", lambda: tunnel.agent.keeper.connection is not first)
    second = await tunnel.agent.keeper.wait_ready(within=WAIT)
    assert tunnel.server.address is not None
    assert second.peer_address == ("127.0.0.1", tunnel.server.address[1])
    code, out, err = await curl("-x", tunnel.proxy, f"{origin.url}/after-reconnect")
    assert (code, out) == (0, b"hello"), err


@requires_squid
async def test_the_fluidity_agent_program_through_squid(
    pki: QuickstartPKI,
    squid_basic: Squid,
    origin: RecordingOrigin,
    processes: list[Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real program (uvloop): password from the environment, HTTP and SOCKS5 clients."""
    monkeypatch.setenv("CORP_PROXY_PASSWORD", "s3cret")
    server = start_process("server", server_yaml(pki), tmp_path)
    processes.append(server)
    upstream = {"url": squid_basic.url, "username": "alice", "password_env": "CORP_PROXY_PASSWORD"}
    agent = start_process("agent", agent_yaml(pki, server.port, upstream_proxy=upstream), tmp_path)
    processes.append(agent)
    assert f"via upstream proxy {squid_basic.url}" in agent.log()

    code, out, err = await curl("-x", f"http://127.0.0.1:{agent.port}", f"{origin.url}/http")
    assert (code, out) == (0, b"hello"), err
    code, out, err = await curl("--socks5-hostname", f"127.0.0.1:{agent.port}", origin.url)
    assert (code, out) == (0, b"hello"), err

    agent.popen.terminate()  # it drains: the origin, in this loop, must keep running
    assert await asyncio.to_thread(agent.popen.wait, WAIT) == 0, agent.log()
    needles = (f"CONNECT 127.0.0.1:{server.port}", "TCP_TUNNEL/200", " alice ")
    await wait_for("squid's log of the agent's tunnel", lambda: log_lines(squid_basic, *needles))


@requires_squid
async def test_the_fluidity_agent_program_logs_a_refused_password(
    pki: QuickstartPKI,
    squid_basic: Squid,
    processes: list[Process],
    tmp_path: Path,
) -> None:
    server = start_process("server", server_yaml(pki), tmp_path)
    processes.append(server)
    upstream = {"url": squid_basic.url, "username": "alice", "password": "wrong"}
    agent = start_process("agent", agent_yaml(pki, server.port, upstream_proxy=upstream), tmp_path)
    processes.append(agent)
    expected = (
        f"tunnel to 127.0.0.1:{server.port}: proxy 127.0.0.1:{squid_basic.port} answered 407 "
        "to CONNECT; it offers Basic; credentials for alice were refused"
    )
    await wait_for("two refusals in the log", lambda: agent.log().count(expected) >= 2)
    assert "wrong" not in agent.log()


# -- SOCKS5 on the agent's port -------------------------------------------------------


async def test_curl_socks5_hostname_reaches_the_origin(
    pki: QuickstartPKI, origin: RecordingOrigin, closing: list[Tunnel]
) -> None:
    # The name travels to the server, which resolves it: its policy must allow it.
    targets = TargetsConfig(allow=("127.0.0.0/8", "localhost"))
    tunnel = await start_tunnel(pki, server_changes={"targets": targets})
    closing.append(tunnel)
    socks = f"127.0.0.1:{tunnel.proxy_port}"
    code, out, err = await curl("--socks5-hostname", socks, f"http://localhost:{origin.port}/s5")
    assert (code, out) == (0, b"hello"), err
    assert origin.heads[-1].startswith(b"GET /s5 HTTP/1.1\r\n")
    assert b"Host: localhost:" in origin.heads[-1]


async def test_curl_socks5_with_an_ip_and_http_on_the_same_port(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    code, out, err = await curl("--socks5", f"127.0.0.1:{tunnel.proxy_port}", f"{origin.url}/ip")
    assert (code, out) == (0, b"hello"), err
    code, out, err = await curl("-x", tunnel.proxy, f"{origin.url}/http")
    assert (code, out) == (0, b"hello"), err


async def test_socks5_says_why_the_server_refused(
    pki: QuickstartPKI, origin: RecordingOrigin, closing: list[Tunnel]
) -> None:
    tunnel = await start_tunnel(pki, server_changes={"targets": _deny_all_targets()})
    closing.append(tunnel)
    socks = f"socks5h://127.0.0.1:{tunnel.proxy_port}"
    code, _, err = await curl("--proxy", socks, f"{origin.url}/refused")
    assert code == 97, err  # CURLE_PROXY: the SOCKS5 handshake failed
    assert err.rstrip().endswith(b"(2)"), err  # reply 2: connection not allowed by ruleset
    assert origin.heads == []


async def test_socks5_username_and_password_when_auth_is_configured(
    pki: QuickstartPKI, origin: RecordingOrigin, closing: list[Tunnel]
) -> None:
    tunnel = await start_tunnel(pki, auth=AuthConfig(username="me", password="s3cret"))
    closing.append(tunnel)
    port = tunnel.proxy_port
    code, out, err = await curl("--proxy", f"socks5h://me:s3cret@127.0.0.1:{port}", origin.url)
    assert (code, out) == (0, b"hello"), err

    code, _, err = await curl("--proxy", f"socks5h://me:wrong@127.0.0.1:{port}", origin.url)
    assert code == 97, err
    code, _, err = await curl("--proxy", f"socks5h://127.0.0.1:{port}", origin.url)
    assert code == 97, err
    code, out, err = await curl("--proxy", f"http://me:s3cret@127.0.0.1:{port}", origin.url)
    assert (code, out) == (0, b"hello"), err
    assert len(origin.heads) == 2


SOCKS_CONNECT = b"\x05\x01\x00" + b"\x05\x01\x00\x01\x7f\x00\x00\x01"
SOCKS_ANSWER = b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6)


@pytest.mark.parametrize("route", ["tunnel", "direct"])
@pytest.mark.parametrize("protocol", ["socks5", "http-connect"])
async def test_a_server_that_speaks_first(
    pki: QuickstartPKI, closing: list[Tunnel], route: str, protocol: str
) -> None:
    """An ssh-like target: it greets the moment it is connected, then echoes."""

    async def greet_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-fluidity-test\r\n")
        writer.write(await reader.read())  # everything, up to the client's EOF
        writer.close()

    target = await asyncio.start_server(greet_then_echo, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    direct = ("127.0.0.1",) if route == "direct" else ()
    tunnel = await start_tunnel(pki, direct=direct)
    closing.append(tunnel)
    async with target, asyncio.timeout(WAIT):
        reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.proxy_port)
        if protocol == "socks5":
            writer.write(SOCKS_CONNECT + port.to_bytes(2, "big"))
            assert await reader.readexactly(len(SOCKS_ANSWER)) == SOCKS_ANSWER
        else:
            authority = f"127.0.0.1:{port}"
            writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            assert await reader.readuntil(b"\r\n\r\n") == (
                b"HTTP/1.1 200 Connection established\r\n\r\n"
            )
        assert await reader.readline() == b"SSH-2.0-fluidity-test\r\n"
        writer.write(b"client hello")
        writer.write_eof()
        assert await reader.read() == b"client hello"
        writer.close()
        await writer.wait_closed()


# -- split routing --------------------------------------------------------------------


def _deny_all_targets() -> TargetsConfig:
    """The server's default policy: loopback targets (the origins) are refused (403)."""
    return TargetsConfig()


async def test_a_direct_host_is_reached_without_the_tunnel(
    pki: QuickstartPKI, origin: RecordingOrigin, closing: list[Tunnel]
) -> None:
    tunnel = await start_tunnel(
        pki, direct=("127.0.0.1", "*.nowhere.test"), server_changes={"targets": _deny_all_targets()}
    )
    closing.append(tunnel)
    quiet_since = tunnel.server.activity().last_activity

    for how in (["-x", tunnel.proxy], ["-x", tunnel.proxy, "--proxytunnel"]):
        code, out, err = await curl(*how, f"{origin.url}/direct")
        assert (code, out) == (0, b"hello"), err
    socks = f"127.0.0.1:{tunnel.proxy_port}"
    code, out, err = await curl("--socks5", socks, f"{origin.url}/direct-socks")
    assert (code, out) == (0, b"hello"), err
    assert len(origin.heads) == 3
    activity = tunnel.server.activity()
    assert (activity.active_streams, activity.last_activity) == (0, quiet_since)

    # The same origin by a name not on the list goes through the tunnel: refused there.
    code, out, err = await curl("-x", tunnel.proxy, "-i", f"http://localhost:{origin.port}/")
    assert code == 0, err
    assert out.startswith(b"HTTP/1.1 403"), out
    assert len(origin.heads) == 3


async def test_a_direct_host_that_refuses_is_a_502(
    pki: QuickstartPKI, closing: list[Tunnel]
) -> None:
    tunnel = await start_tunnel(pki, direct=("127.0.0.1",))
    closing.append(tunnel)
    origin = await RecordingOrigin().start()
    port = origin.port
    await origin.close()  # nobody listens there now
    code, out, err = await curl("-x", tunnel.proxy, "-i", f"http://127.0.0.1:{port}/")
    assert code == 0, err
    assert out.startswith(b"HTTP/1.1 502"), out
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused".encode() in out


# -- /proxy.pac -----------------------------------------------------------------------


async def test_the_agent_serves_its_routing_as_a_pac_file(
    pki: QuickstartPKI, closing: list[Tunnel]
) -> None:
    direct = ("*.corp.example", "intranet", "10.0.0.0/8")
    tunnel = await start_tunnel(pki, direct=direct)
    closing.append(tunnel)

    code, out, err = await curl("-i", f"http://127.0.0.1:{tunnel.proxy_port}/proxy.pac")
    assert code == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Type: application/x-ns-proxy-autoconfig" in head
    pac = PACFile(body.decode())
    agent = f"PROXY 127.0.0.1:{tunnel.proxy_port}"
    cases = {
        "wiki.corp.example": "DIRECT",
        "intranet": "DIRECT",
        "10.1.2.3": "DIRECT",
        "corp.example": agent,
        "example.com": agent,
        "11.1.2.3": agent,
    }
    for host, expected in cases.items():
        assert pac.find_proxy_for_url(f"https://{host}/", host) == expected, host
