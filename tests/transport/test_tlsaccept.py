"""The TLS front door: failure lines and their rate limit (no sockets), and its listening."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import pytest

from fluidity.config.values import Address
from fluidity.pki.certs import QuickstartPKI
from fluidity.server.server import Server
from fluidity.transport.tlsaccept import (
    AcceptedSocket,
    FailureLog,
    describe_failure,
    failure_reason,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_are_logged_one_line_each_up_to_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    clock = Clock()
    failures = FailureLog(burst=3, window=10.0, clock=clock)
    for i in range(5):
        failures.failed(f"127.0.0.1:{i}", "certificate_revoked", "certificate revoked")
    assert [r.getMessage() for r in caplog.records] == [
        f"TLS handshake from 127.0.0.1:{i} failed (certificate_revoked): certificate revoked"
        for i in range(3)
    ]
    assert failures.suppressed == 2
    clock.now += 10.0
    failures.failed("127.0.0.1:9", "timeout", "no complete handshake")
    assert [r.getMessage() for r in caplog.records][3:] == [
        "2 more failed TLS handshakes were not logged in the last 10 s",
        "TLS handshake from 127.0.0.1:9 failed (timeout): no complete handshake",
    ]


def test_routine_failures_are_debug_lines_and_spend_no_info_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    failures = FailureLog(burst=2, window=10.0, clock=Clock())
    for i in range(5):
        failures.failed(f"127.0.0.1:{i}", "not_tls", "not a TLS client")
        failures.failed(f"127.0.0.1:{i}", "connection_lost", "the client closed")
    assert caplog.records == [] and failures.suppressed == 0
    failures.failed("127.0.0.1:7", "certificate_missing", "the client sent no certificate")
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    caplog.set_level(logging.DEBUG, logger="fluidity")
    failures.failed("127.0.0.1:8", "not_tls", "not a TLS client")
    failures.failed("127.0.0.1:9", "not_tls", "not a TLS client")  # over the budget of 2
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.DEBUG]
    assert failures.suppressed == 1


def test_failure_labels_read_the_loops_handshake_deadline_as_timeout() -> None:
    loop_deadline = ConnectionAbortedError(
        "SSL handshake is taking longer than 0.3 seconds: aborting the connection"
    )
    assert failure_reason(loop_deadline) == "timeout"
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ConnectionAbortedError()) == "connection_lost"
    assert failure_reason(ConnectionResetError()) == "connection_lost"
    assert describe_failure(loop_deadline, 0.3) == (
        "no complete handshake within 0.3 s (limits.handshake_timeout)"
    )


def test_failure_reasons_read_as_words() -> None:
    verify = ssl.SSLCertVerificationError(1, "verify failed")
    verify.verify_message = "certificate has expired"
    assert describe_failure(verify, 10) == "client certificate refused: certificate has expired"
    version = ssl.SSLError(1, "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol")
    version.reason = "UNSUPPORTED_PROTOCOL"
    assert "TLS 1.3" in describe_failure(version, 10)
    odd = ssl.SSLError(1, "x")
    odd.reason = "SOME_NEW_THING"
    assert describe_failure(odd, 10) == "some new thing"
    assert describe_failure(TimeoutError(), 2.5) == (
        "no complete handshake within 2.5 s (limits.handshake_timeout)"
    )
    assert "closed the connection" in describe_failure(ConnectionResetError(), 10)


async def test_a_name_with_two_addresses_is_served_on_both_at_one_port(
    pki: QuickstartPKI,
) -> None:
    from support.harness import make_server_config
    from support.secpki import probe

    server = Server(make_server_config(pki, listen=Address("localhost", 0)))
    await server.start()
    try:
        assert server.address is not None
        context = ssl.create_default_context(cafile=pki.ca_cert)
        context.load_cert_chain(pki.client_cert, pki.client_key)
        context.set_alpn_protocols(["h2"])
        hosts = {info[4][0] for info in socket.getaddrinfo("localhost", 1, type=socket.SOCK_STREAM)}
        for host in hosts:
            seen = await probe(server.address[1], context, host=host)
            assert seen.accepted, (host, seen.detail)
    finally:
        await server.shutdown(drain_timeout=0.5)


async def test_an_accepted_socket_is_closed_when_its_handshake_never_started() -> None:
    # A handshake task cancelled before its first step runs none of its code: only
    # the done callback can close the socket nobody has taken yet.
    ours, theirs = socket.socketpair()
    with theirs:
        accepted = AcceptedSocket(ours, asyncio.Protocol)

        async def handshake() -> None:
            accepted.protocol()  # never reached

        task = asyncio.get_running_loop().create_task(handshake())
        task.add_done_callback(accepted.release)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)  # release, the first done callback, has run
        assert not accepted.taken and ours.fileno() == -1


async def test_an_accepted_socket_the_loop_took_is_left_to_the_loop() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        accepted = AcceptedSocket(ours, asyncio.Protocol)
        assert isinstance(accepted.protocol(), asyncio.BaseProtocol)
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        await asyncio.wait_for(task, 5.0)
        accepted.release(task)
        assert accepted.taken and ours.fileno() != -1  # the transport closes it, not us
