"""Reaching the server through the corporate proxy: squid on loopback, and a scripted proxy.

Squid (Debian's, started per module by tests/support/squidfix.py) proves Basic and NTLM
against a real proxy. Negotiate needs a KDC, which tests cannot have, so its header
exchange runs against a scripted proxy with a fake security context; the same
scripted proxy plays the misbehaviours squid will not (closing mid-handshake,
hanging, chunked refusals).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import h11
import pytest
import spnego.exceptions
import trustme

from fluidity.agent.proxyauth import (
    AuthContext,
    Challenge,
    ProxyAuthenticator,
    parse_challenges,
)
from fluidity.agent.upstream import open_tunnel
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.errors import ConfigError, TunnelError, UpstreamProxyError
from fluidity.protocol.proxyroute import Credentials, ProxyChoice
from support.squidfix import Squid, requires_squid, run_squid

WAIT = 10.0  # seconds: the bound on every network wait in this file


# -- a TLS echo server: the stand-in for the Fluidity server --------------------------


@dataclass
class TlsEcho:
    port: int
    client_context: ssl.SSLContext


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    ca.configure_trust(client)
    return server, client


@pytest.fixture
async def tls_echo(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> AsyncIterator[TlsEcho]:
    server_context, client_context = tls_contexts

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(1000):
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
    async with server:
        yield TlsEcho(server.sockets[0].getsockname()[1], client_context)


async def echo_over_tls(
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter], echo: TlsEcho, payload: bytes
) -> bytes:
    """Start TLS on a tunnel to the echo server, send ``payload``, return what came back."""
    reader, writer = streams
    async with asyncio.timeout(WAIT):
        await writer.start_tls(echo.client_context, server_hostname="localhost")
        writer.write(payload)
        await writer.drain()
        answer = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
    return answer


async def wait_for_log_line(squid: Squid, *needles: str) -> str:
    """Squid logs a CONNECT when the tunnel ends: poll its log until the line is there."""
    async with asyncio.timeout(WAIT):
        for _ in range(int(WAIT / 0.02) + 1):
            for line in squid.access_log().splitlines():
                if all(needle in line for needle in needles):
                    return line
            await asyncio.sleep(0.02)
    raise AssertionError(f"no access log line with {needles}:\n{squid.access_log()}")


def closed_port() -> int:
    """A loopback port nobody listens on."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- squid with Basic ------------------------------------------------------------------


@pytest.fixture(scope="module")
def squid_basic() -> Iterator[Squid]:
    with run_squid(basic_users={"alice": "s3cret"}) as squid:
        yield squid


@requires_squid
async def test_connect_through_squid_with_basic_reaches_the_tls_server(
    squid_basic: Squid, tls_echo: TlsEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = UpstreamProxyConfig(squid_basic.url, username="alice", password="s3cret")
    streams = await open_tunnel(config, "127.0.0.1", tls_echo.port, timeout=WAIT)
    assert await echo_over_tls(streams, tls_echo, b"hello through squid") == b"hello through squid"
    line = await wait_for_log_line(squid_basic, f"CONNECT 127.0.0.1:{tls_echo.port}", "TCP_TUNNEL")
    assert " alice " in line
    assert (
        "s3cret" not in caplog.text
        and base64.b64encode(b"alice:s3cret").decode() not in caplog.text
    )


@requires_squid
async def test_a_wrong_basic_password_is_a_clear_407_error(
    squid_basic: Squid, tls_echo: TlsEcho
) -> None:
    config = UpstreamProxyConfig(squid_basic.url, username="alice", password="wrong-one")
    with pytest.raises(UpstreamProxyError) as caught:
        await open_tunnel(config, "127.0.0.1", tls_echo.port, timeout=WAIT)
    message = str(caught.value)
    assert message.startswith(
        f"proxy 127.0.0.1:{squid_basic.port} answered 407 to CONNECT; it offers Basic; "
        "credentials for alice were refused"
    )
    assert "wrong-one" not in message and "wrong-one" not in repr(config)


@requires_squid
async def test_no_credentials_for_a_basic_proxy_says_what_to_set(
    squid_basic: Squid, tls_echo: TlsEcho
) -> None:
    with pytest.raises(UpstreamProxyError, match=r"Basic needs upstream_proxy\.username"):
        await open_tunnel(
            UpstreamProxyConfig(squid_basic.url), "127.0.0.1", tls_echo.port, timeout=WAIT
        )


@requires_squid
async def test_a_destination_the_proxy_forbids_is_a_403_error(
    squid_basic: Squid, tls_echo: TlsEcho
) -> None:
    config = UpstreamProxyConfig(squid_basic.url, username="alice", password="s3cret")
    with pytest.raises(UpstreamProxyError, match=r"answered 403 Forbidden to CONNECT 127\.0\.0\.2"):
        await open_tunnel(config, "127.0.0.2", tls_echo.port, timeout=WAIT)


@requires_squid
async def test_env_mode_uses_https_proxy_with_its_credentials(
    squid_basic: Squid, tls_echo: TlsEcho, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://alice:s3cret@127.0.0.1:{squid_basic.port}")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("NO_PROXY", "corp.example,10.0.0.0/8")
    monkeypatch.delenv("no_proxy", raising=False)
    streams = await open_tunnel(
        UpstreamProxyConfig("env"), "127.0.0.1", tls_echo.port, timeout=WAIT
    )
    assert await echo_over_tls(streams, tls_echo, b"via env") == b"via env"
    await wait_for_log_line(squid_basic, f"CONNECT 127.0.0.1:{tls_echo.port}", " alice ")


@requires_squid
async def test_pac_mode_skips_an_unreachable_proxy(
    squid_basic: Squid, tls_echo: TlsEcho, tmp_path: Path
) -> None:
    dead = closed_port()
    pac = tmp_path / "proxy.pac"
    pac.write_text(
        "function FindProxyForURL(url, host) {\n"
        f'  return "PROXY 127.0.0.1:{dead}; PROXY 127.0.0.1:{squid_basic.port}";\n'
        "}\n"
    )
    config = UpstreamProxyConfig(f"pac+{pac.as_uri()}", username="alice", password="s3cret")
    streams = await open_tunnel(config, "127.0.0.1", tls_echo.port, timeout=WAIT)
    assert await echo_over_tls(streams, tls_echo, b"via pac") == b"via pac"


# -- squid with NTLM (and Basic, offered second) -----------------------------------------


@pytest.fixture(scope="module")
def squid_ntlm() -> Iterator[Squid]:
    # Basic is offered too, with another password: success proves NTLM was chosen.
    with run_squid(ntlm=True, basic_users={"alice": "not-the-ntlm-password"}) as squid:
        yield squid


@requires_squid
async def test_ntlm_through_squid_reaches_the_tls_server(
    squid_ntlm: Squid, tls_echo: TlsEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fluidity.agent.upstream")
    config = UpstreamProxyConfig(squid_ntlm.url, username="CORP\\alice", password="pa55word")
    streams = await open_tunnel(config, "127.0.0.1", tls_echo.port, timeout=WAIT)
    assert await echo_over_tls(streams, tls_echo, b"hello over ntlm") == b"hello over ntlm"
    await wait_for_log_line(squid_ntlm, f"CONNECT 127.0.0.1:{tls_echo.port}", "TCP_TUNNEL/200")
    assert "answering with ntlm" in caplog.text
    assert "pa55word" not in caplog.text


# -- a scripted proxy ------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False  # close the connection after this answer
    silent: bool = False  # never answer


@dataclass
class ScriptedProxy:
    """Answers CONNECT requests from a script; after a 200 it echoes bytes itself."""

    answers: list[Answer]
    requests: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(len(self.answers) + 1):
                request = await self._next_request(conn, reader)
                if request is None or not self.answers:
                    return
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.requests.append((number, headers))
                if not await self._answer(conn, reader, writer, self.answers.pop(0)):
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    async def _next_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        request = None
        for _ in range(100):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
        return None

    async def _answer(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer: Answer,
    ) -> bool:
        """Send ``answer``; True if the connection goes on to another request."""
        if answer.silent:
            await reader.read()
            return False
        headers = list(answer.headers)
        names = {name.lower() for name, _ in headers}
        if answer.status != 200 and not names & {"content-length", "transfer-encoding"}:
            headers.append(("Content-Length", str(len(answer.body))))
        if answer.close:
            headers.append(("Connection", "close"))
        reason = HTTPStatus(answer.status).phrase
        response = h11.Response(status_code=answer.status, headers=headers, reason=reason)
        writer.write(conn.send(response))
        if answer.status == 200:
            for _ in range(1000):
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
            return False
        writer.write(conn.send(h11.Data(data=answer.body)) + conn.send(h11.EndOfMessage()))
        await writer.drain()
        return not answer.close


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedProxy]:
    proxy = ScriptedProxy([])
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        yield proxy


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FakeContext:
    """A client security context that follows a script of tokens (no KDC needed)."""

    def __init__(self, script: dict[bytes | None, bytes | None], final: bytes | None) -> None:
        self.script = script
        self.final = final
        self.received: list[bytes | None] = []
        self.complete = False

    def step(self, in_token: bytes | None = None) -> bytes | None:
        self.received.append(in_token)
        if self.final is not None and in_token == self.final:
            self.complete = True
        if in_token not in self.script:
            raise spnego.exceptions.InvalidTokenError(context_msg="unexpected token")
        return self.script[in_token]


@dataclass
class FakeFactory:
    context: FakeContext
    calls: list[tuple[str | None, str | None, str, str]] = field(default_factory=list)

    def __call__(
        self, username: str | None, password: str | None, *, hostname: str, protocol: str
    ) -> AuthContext:
        self.calls.append((username, password, hostname, protocol))
        return self.context


async def echo_plain(streams: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bytes:
    reader, writer = streams
    async with asyncio.timeout(WAIT):
        writer.write(b"raw bytes")
        answer = await reader.readexactly(9)
        writer.close()
        await writer.wait_closed()
    return answer


async def test_negotiate_with_a_kerberos_ticket_runs_every_leg_on_one_connection(
    scripted: ScriptedProxy,
) -> None:
    scripted.answers = [
        Answer(407, [("Proxy-Authenticate", "Negotiate"), ("Proxy-Authenticate", "NTLM")], b"no"),
        Answer(407, [("Proxy-Authenticate", f"Negotiate {b64(b'server-1')}")], b"more, please"),
        Answer(200, [("Proxy-Authenticate", f"Negotiate {b64(b'server-final')}")]),
    ]
    context = FakeContext(
        {None: b"client-1", b"server-1": b"client-2", b"server-final": None}, b"server-final"
    )
    factory = FakeFactory(context)
    config = UpstreamProxyConfig(f"http://127.0.0.1:{scripted.port}")
    streams = await open_tunnel(
        config, "server.example", 443, timeout=WAIT, context_factory=factory
    )
    assert await echo_plain(streams) == b"raw bytes"
    assert factory.calls == [(None, None, "127.0.0.1", "negotiate")]
    assert [auth.get("proxy-authorization") for _, auth in scripted.requests] == [
        None,
        f"Negotiate {b64(b'client-1')}",
        f"Negotiate {b64(b'client-2')}",
    ]
    assert {number for number, _ in scripted.requests} == {1}
    assert scripted.requests[0][1]["host"] == "server.example:443"
    assert context.received == [None, b"server-1", b"server-final"]  # mutual authentication


async def test_negotiate_that_cannot_start_falls_back_to_basic(scripted: ScriptedProxy) -> None:
    scripted.answers = [
        Answer(407, [("Proxy-Authenticate", 'Negotiate, Basic realm="corp, inc"')]),
        Answer(200),
    ]

    def no_kerberos(
        username: str | None, password: str | None, *, hostname: str, protocol: str
    ) -> AuthContext:
        raise spnego.exceptions.BadMechanismError(context_msg="no credential cache")

    config = UpstreamProxyConfig(f"http://bob:pw@127.0.0.1:{scripted.port}")
    streams = await open_tunnel(
        config, "server.example", 443, timeout=WAIT, context_factory=no_kerberos
    )
    assert await echo_plain(streams) == b"raw bytes"
    assert scripted.requests[1][1]["proxy-authorization"] == f"Basic {b64(b'bob:pw')}"


async def test_a_proxy_that_closes_after_the_bare_407_is_dialled_again(
    scripted: ScriptedProxy,
) -> None:
    scripted.answers = [
        Answer(407, [("Proxy-Authenticate", "Basic realm=x")], close=True),
        Answer(200),
    ]
    config = UpstreamProxyConfig(f"http://127.0.0.1:{scripted.port}", username="bob", password="pw")
    streams = await open_tunnel(config, "server.example", 443, timeout=WAIT)
    assert await echo_plain(streams) == b"raw bytes"
    assert [number for number, _ in scripted.requests] == [1, 2]


async def test_a_proxy_that_closes_inside_the_ntlm_handshake_is_a_clear_error(
    scripted: ScriptedProxy,
) -> None:
    scripted.answers = [
        Answer(407, [("Proxy-Authenticate", "NTLM")]),
        Answer(407, [("Proxy-Authenticate", f"NTLM {b64(b'challenge')}")], close=True),
    ]
    factory = FakeFactory(FakeContext({None: b"negotiate", b"challenge": b"authenticate"}, None))
    config = UpstreamProxyConfig(
        f"http://127.0.0.1:{scripted.port}", username="C\\bob", password="pw"
    )
    with pytest.raises(UpstreamProxyError, match="closed the connection in the middle of the ntlm"):
        await open_tunnel(config, "server.example", 443, timeout=WAIT, context_factory=factory)


async def test_refused_ntlm_names_the_user_and_the_schemes(scripted: ScriptedProxy) -> None:
    offered = [("Proxy-Authenticate", "NTLM"), ("Proxy-Authenticate", "Basic realm=corp")]
    scripted.answers = [
        Answer(407, offered),
        Answer(407, [("Proxy-Authenticate", f"NTLM {b64(b'challenge')}")]),
        Answer(407, offered, b"<html>denied</html>" * 100),
    ]
    factory = FakeFactory(FakeContext({None: b"negotiate", b"challenge": b"authenticate"}, None))
    config = UpstreamProxyConfig(
        f"http://127.0.0.1:{scripted.port}", username="CORP\\alice", password="pw"
    )
    with pytest.raises(UpstreamProxyError) as caught:
        await open_tunnel(config, "server.example", 443, timeout=WAIT, context_factory=factory)
    assert str(caught.value).startswith(
        f"proxy 127.0.0.1:{scripted.port} answered 407 to CONNECT; it offers NTLM, Basic; "
        "credentials for CORP\\alice were refused"
    )


async def test_only_unsupported_schemes_is_a_clear_error(scripted: ScriptedProxy) -> None:
    scripted.answers = [Answer(407, [("Proxy-Authenticate", 'Digest realm="x", nonce="abc"')])]
    config = UpstreamProxyConfig(f"http://127.0.0.1:{scripted.port}", username="bob", password="pw")
    with pytest.raises(
        UpstreamProxyError, match="it offers Digest; Fluidity speaks Negotiate, NTLM and Basic"
    ):
        await open_tunnel(config, "server.example", 443, timeout=WAIT)


async def test_a_chunked_error_answer_is_reported_with_its_status_line(
    scripted: ScriptedProxy,
) -> None:
    scripted.answers = [Answer(502, [("Transfer-Encoding", "chunked")], b"upstream down")]
    config = UpstreamProxyConfig(f"http://127.0.0.1:{scripted.port}")
    with pytest.raises(
        UpstreamProxyError, match=r"answered 502 Bad Gateway to CONNECT server\.example:443"
    ):
        await open_tunnel(config, "server.example", 443, timeout=WAIT)


async def test_a_silent_proxy_times_out_naming_what_it_waited_for(scripted: ScriptedProxy) -> None:
    scripted.answers = [Answer(0, silent=True)]
    config = UpstreamProxyConfig(f"http://127.0.0.1:{scripted.port}")
    with pytest.raises(
        UpstreamProxyError,
        match=rf"timed out after 0.2 s waiting for proxy 127.0.0.1:{scripted.port} to answer",
    ):
        await open_tunnel(config, "server.example", 443, timeout=0.2)


async def test_an_unreachable_proxy_is_named() -> None:
    port = closed_port()
    config = UpstreamProxyConfig(f"http://127.0.0.1:{port}")
    with pytest.raises(
        UpstreamProxyError,
        match=rf"no way to reach server.example:443: PROXY 127.0.0.1:{port} \(Connection refused\)",
    ):
        await open_tunnel(config, "server.example", 443, timeout=WAIT)


# -- direct routes ----------------------------------------------------------------------


async def test_no_proxy_sends_the_connection_direct(
    tls_echo: TlsEcho, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.0/8")
    streams = await open_tunnel(
        UpstreamProxyConfig("env"), "127.0.0.1", tls_echo.port, timeout=WAIT
    )
    assert await echo_over_tls(streams, tls_echo, b"direct") == b"direct"


async def test_a_pac_direct_answer_connects_directly(tls_echo: TlsEcho, tmp_path: Path) -> None:
    pac = tmp_path / "proxy.pac"
    pac.write_text('function FindProxyForURL(url, host) { return "DIRECT"; }')
    config = UpstreamProxyConfig(f"pac+{pac.as_uri()}")
    streams = await open_tunnel(config, "127.0.0.1", tls_echo.port, timeout=WAIT)
    assert await echo_over_tls(streams, tls_echo, b"pac direct") == b"pac direct"


async def test_only_socks_from_the_pac_file_is_reported(tmp_path: Path) -> None:
    pac = tmp_path / "proxy.pac"
    pac.write_text('function FindProxyForURL(url, host) { return "SOCKS5 127.0.0.1:1080"; }')
    with pytest.raises(UpstreamProxyError, match=r"SOCKS5 127\.0\.0\.1:1080 \(only PROXY/HTTP"):
        await open_tunnel(
            UpstreamProxyConfig(f"pac+{pac.as_uri()}"), "a.example", 443, timeout=WAIT
        )


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "https://proxy.corp:3128"}, "TLS to the proxy itself is not supported"),
        ({"url": "socks5://proxy.corp:1080"}, "is not supported"),
        ({"url": "http://proxy.corp"}, "needs a host and a port"),
        ({"url": "proxy.corp:3128"}, "is not supported"),
        ({"url": "http://p:1", "password": "x"}, "username: required"),
        ({"url": "http://p:1", "username": "u", "password": "x", "password_env": "P"}, "not both"),
    ],
)
def test_bad_configs_are_config_errors(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UpstreamProxyConfig(**kwargs)


def test_config_repr_never_shows_a_password() -> None:
    config = UpstreamProxyConfig(
        "http://bob:hunter2@proxy.corp:3128", username="u", password="pw-1"
    )
    assert "hunter2" not in repr(config) and "pw-1" not in repr(config)
    assert "bob:***@proxy.corp:3128" in repr(config)


def test_password_env_is_read_when_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    config = UpstreamProxyConfig("http://p:1", username="u", password_env="FLUIDITY_TEST_PW")
    monkeypatch.delenv("FLUIDITY_TEST_PW", raising=False)
    with pytest.raises(ConfigError, match="FLUIDITY_TEST_PW is not set"):
        config.credentials()
    monkeypatch.setenv("FLUIDITY_TEST_PW", "from-env")
    assert config.credentials() == Credentials("u", "from-env")
    assert "from-env" not in repr(config.credentials())


def test_upstream_errors_are_tunnel_errors() -> None:
    assert issubclass(UpstreamProxyError, TunnelError)
    assert str(ProxyChoice("http", "p", 1)) == "PROXY p:1"


# -- the 407 dance without I/O (fluidity.agent.proxyauth) ----------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["Negotiate, NTLM"], [Challenge("Negotiate"), Challenge("NTLM")]),
        (
            ['Basic realm="corp, inc", charset="UTF-8"'],
            [Challenge("Basic", 'realm="corp, inc", charset="UTF-8"')],
        ),
        (
            ["NTLM TlRMTVNTUAACAAAA", "Basic realm=x"],
            [Challenge("NTLM", "TlRMTVNTUAACAAAA"), Challenge("Basic", "realm=x")],
        ),
        (
            ['Digest realm="a", nonce="b,c", Negotiate YII=='],
            [Challenge("Digest", 'realm="a", nonce="b,c"'), Challenge("Negotiate", "YII==")],
        ),
        ([' ,  Basic   realm="a"  , '], [Challenge("Basic", 'realm="a"')]),
    ],
)
def test_proxy_authenticate_headers_parse_into_challenges(
    headers: list[str], expected: list[Challenge]
) -> None:
    assert parse_challenges(headers) == expected


def test_a_challenge_token_is_its_base64_token68() -> None:
    assert Challenge("NTLM", b64(b"\x01\x02")).token() == b"\x01\x02"
    assert Challenge("Basic", 'realm="x"').token() is None
    assert Challenge("Negotiate").token() is None


def test_the_negotiate_header_exchange_leg_by_leg() -> None:
    context = FakeContext(
        {None: b"client-1", b"server-1": b"client-2", b"server-final": None}, b"server-final"
    )
    auth = ProxyAuthenticator("proxy.corp:3128", Credentials(), FakeFactory(context))
    first = auth.respond(parse_challenges(["Negotiate", "NTLM", "Basic realm=corp"]))
    assert first == f"Negotiate {b64(b'client-1')}"
    assert not auth.continues_handshake
    second = auth.respond(parse_challenges([f"Negotiate {b64(b'server-1')}"]))
    assert second == f"Negotiate {b64(b'client-2')}"
    assert auth.continues_handshake
    auth.accepted(parse_challenges([f"Negotiate {b64(b'server-final')}"]))
    assert context.complete and context.received[-1] == b"server-final"


def test_a_bare_negotiate_after_our_token_means_refused() -> None:
    context = FakeContext({None: b"client-1"}, None)
    auth = ProxyAuthenticator("proxy.corp:3128", Credentials(), FakeFactory(context))
    auth.respond([Challenge("Negotiate")])
    with pytest.raises(UpstreamProxyError) as caught:
        auth.respond([Challenge("Negotiate")])
    assert str(caught.value) == (
        "proxy proxy.corp:3128 answered 407 to CONNECT; it offers Negotiate; the Kerberos "
        "credentials of the current user were refused (Negotiate): check the ticket (klist) "
        "or set upstream_proxy.username and password"
    )


def test_a_mutual_authentication_failure_is_reported() -> None:
    context = FakeContext({None: b"client-1"}, None)
    auth = ProxyAuthenticator("proxy.corp:3128", Credentials(), FakeFactory(context))
    auth.respond([Challenge("Negotiate")])
    with pytest.raises(UpstreamProxyError, match="failed mutual authentication"):
        auth.accepted([Challenge("Negotiate", b64(b"forged"))])


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["Basic realm=x", "NTLM", "Negotiate"], "Negotiate"),
        (["Basic realm=x", "NTLM"], "NTLM"),
        (["Basic realm=x", "Digest realm=y"], "Basic"),
    ],
)
def test_the_strongest_offered_scheme_is_chosen(offered: list[str], chosen: str) -> None:
    factory = FakeFactory(FakeContext({None: b"token"}, None))
    auth = ProxyAuthenticator("p:1", Credentials("bob", "pw"), factory)
    assert auth.respond(parse_challenges(offered)).split()[0] == chosen


def test_ntlm_without_a_password_says_what_to_configure() -> None:
    auth = ProxyAuthenticator("proxy.corp:3128", Credentials("CORP\\bob"))  # real pyspnego
    with pytest.raises(UpstreamProxyError) as caught:
        auth.respond([Challenge("NTLM")])
    message = str(caught.value)
    assert message.startswith("proxy proxy.corp:3128 answered 407 to CONNECT; it offers NTLM; ")
    assert "NTLM could not start without a password" in message


def test_real_pyspnego_ntlm_produces_a_negotiate_message() -> None:
    auth = ProxyAuthenticator("proxy.corp:3128", Credentials("CORP\\bob", "pw"))
    header = auth.respond([Challenge("NTLM")])
    scheme, token = header.split()
    assert scheme == "NTLM" and base64.b64decode(token).startswith(b"NTLMSSP\x00\x01")
    assert "pw" not in repr(auth)
