"""The TLS front door's bookkeeping, without sockets: failure lines and their rate limit."""

from __future__ import annotations

import logging
import ssl

import pytest

from fluidity.tlsaccept import FailureLog, describe_failure


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
        failures.failed(f"127.0.0.1:{i}", "not a TLS client")
    assert [r.getMessage() for r in caplog.records] == [
        f"TLS handshake with 127.0.0.1:{i} failed: not a TLS client" for i in range(3)
    ]
    assert failures.suppressed == 2
    clock.now += 10.0
    failures.failed("127.0.0.1:9", "not a TLS client")
    assert [r.getMessage() for r in caplog.records][3:] == [
        "2 more failed TLS handshakes were not logged in the last 10 s",
        "TLS handshake with 127.0.0.1:9 failed: not a TLS client",
    ]


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
