"""End to end with real clients: curl and httpx through agent and server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import shutil

import httpx
import pytest

from support.harness import Tunnel
from support.origins import RecordingOrigin

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW"]


async def curl(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--noproxy",
        "",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out, err


@pytest.mark.parametrize("method", METHODS)
async def test_curl_carries_every_method(
    tunnel: Tunnel, origin: RecordingOrigin, method: str
) -> None:
    head_only = ["--head"] if method == "HEAD" else ["-X", method, "-i"]
    code, out, err = await curl("-x", tunnel.proxy, *head_only, f"{origin.url}/any")
    assert code == 0, err
    assert out.startswith(b"HTTP/1.1 200"), out
    assert f"X-Method: {method}".encode() in out
    assert origin.heads[-1].startswith(f"{method} /any HTTP/1.1\r\n".encode())


async def test_curl_proxytunnel_uses_connect(tunnel: Tunnel, origin: RecordingOrigin) -> None:
    code, out, err = await curl("-x", tunnel.proxy, "--proxytunnel", f"{origin.url}/hi")
    assert code == 0, err
    assert out == b"hello"
    assert tunnel.agent.keeper.connection is not None


async def test_curl_post_body_arrives_intact(tunnel: Tunnel, origin: RecordingOrigin) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    code, out, err = await curl(
        "-x", tunnel.proxy, "--data-binary", "@-", f"{origin.url}/sha256", stdin=body
    )
    assert code == 0, err
    assert out.decode() == hashlib.sha256(body).hexdigest()


async def test_curl_chunked_upload_with_expect_100_continue(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    body = b"chunk" * 100_000
    code, out, err = await curl(
        "-x",
        tunnel.proxy,
        "-T",
        "-",
        "-H",
        "Expect: 100-continue",
        f"{origin.url}/sha256",
        stdin=body,
    )
    assert code == 0, err
    assert out.decode() == hashlib.sha256(body).hexdigest()
    assert b"Transfer-Encoding: chunked" in origin.heads[-1]


async def test_httpx_keeps_one_client_connection_across_requests(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    async with httpx.AsyncClient(proxy=tunnel.proxy, timeout=10, trust_env=False) as client:
        for i in range(5):
            response = await client.get(f"{origin.url}/n/{i}")
            assert response.status_code == 200
            assert response.text == "hello"
        streamed = await client.post(f"{origin.url}/echo", content=_chunks())
        assert streamed.content == b"".join([b"part%d;" % i for i in range(50)])


async def _chunks():  # type: ignore[no-untyped-def]
    for i in range(50):
        yield b"part%d;" % i


async def test_one_client_connection_reaches_two_hosts_in_turn(tunnel: Tunnel) -> None:
    first = await RecordingOrigin().start()
    second = await RecordingOrigin().start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.proxy_port)
        for target in (first, second, first):
            writer.write(
                f"GET {target.url}/x HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n\r\n".encode()
            )
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                assert await reader.readexactly(5) == b"hello"
        writer.close()
        assert len(first.heads) == 2
        assert len(second.heads) == 1
    finally:
        await first.close()
        await second.close()


async def test_headers_reach_the_origin_byte_for_byte(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    headers = (
        f"Host: 127.0.0.1:{origin.port}\r\n"
        "X-CuStOm-Case: Value With  Spaces\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Accept: */*\r\n"
        "X-Dup: one\r\n"
        "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\n"
        "X-Dup: two\r\n"
        "cookie: a=1; b=2\r\n"
    )
    request = f"GET {origin.url}/path?q=1&r=%20 HTTP/1.1\r\n{headers}\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.proxy_port)
    writer.write(request)
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    expected = (
        "GET /path?q=1&r=%20 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{origin.port}\r\n"
        "X-CuStOm-Case: Value With  Spaces\r\n"
        "Accept: */*\r\n"
        "X-Dup: one\r\n"
        "X-Dup: two\r\n"
        "cookie: a=1; b=2\r\n\r\n"
    ).encode()
    assert origin.heads[-1] == expected


async def test_policy_refusal_is_a_403_with_a_reason(tunnel: Tunnel) -> None:
    code, out, err = await curl("-x", tunnel.proxy, "-i", "http://169.254.169.254/latest/")
    assert code == 0, err
    assert out.startswith(b"HTTP/1.1 403")
    assert b"169.254.169.254" in out


async def test_refused_target_is_a_502(tunnel: Tunnel) -> None:
    closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    code, out, _ = await curl("-x", tunnel.proxy, "-i", f"http://127.0.0.1:{port}/")
    assert code == 0
    assert out.startswith(b"HTTP/1.1 502")
    assert b"refused" in out


async def test_connect_to_a_denied_target_answers_403(tunnel: Tunnel) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.proxy_port)
    writer.write(b"CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: 10.1.2.3:443\r\n\r\n")
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 403")


async def test_garbage_from_a_client_is_a_400_and_the_agent_lives_on(
    tunnel: Tunnel, origin: RecordingOrigin
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.proxy_port)
    writer.write(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")
    code, out, _ = await curl("-x", tunnel.proxy, f"{origin.url}/")
    assert (code, out) == (0, b"hello")
