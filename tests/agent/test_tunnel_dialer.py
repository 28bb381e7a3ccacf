"""The metrics label of a failed attempt to connect the tunnel. No event loop.

Dialing itself runs over real sockets in tests/agent/test_reconnect.py and
tests/transport/test_handshakes.py.
"""

from __future__ import annotations

import pytest

from fluidity.agent.dialer import failure_reason
from fluidity.errors import (
    AuthenticationError,
    HandshakeError,
    PacError,
    PathError,
    TLSInspectionDetected,
    TunnelClosed,
    TunnelError,
    UpstreamProxyError,
)


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        pytest.param(HandshakeError("slow", "timeout"), "timeout", id="handshake-timeout"),
        pytest.param(HandshakeError("no h2", "no_http2"), "no_http2", id="no-http2"),
        pytest.param(AuthenticationError("refused"), "certificate_refused", id="auth"),
        pytest.param(TLSInspectionDetected("s", "Zscaler"), "tls_inspection", id="inspected"),
        pytest.param(UpstreamProxyError("407", status=504), "upstream_proxy", id="proxy"),
        pytest.param(PacError("bad PAC"), "upstream_proxy", id="pac"),
        pytest.param(PathError("slow", status=504), "timeout", id="path-timeout"),
        pytest.param(PathError("refused"), "connect_failed", id="path-refused"),
        pytest.param(TunnelClosed("gone"), "tls_error", id="other"),
    ],
)
def test_failure_reason_labels_each_kind_of_failure(exc: TunnelError, label: str) -> None:
    assert failure_reason(exc) == label
