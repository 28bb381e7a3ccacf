"""TLS over memory buffers, with the tunnel's real contexts and real certificates: no
sockets, no event loop. The inner handshake of the WebSocket transport proves exactly
what the direct transport proves."""

from __future__ import annotations

import os

import pytest

from fluidity.errors import HandshakeError, TunnelClosed
from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki
from fluidity.transport.memtls import MemoryTLS
from fluidity.transport.tls import agent_context, server_context


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> QuickstartPKI:
    """Another CA with its own server and client certificates."""
    return ensure_quickstart_pki(tmp_path_factory.mktemp("stranger"))


def agent_side(pki: QuickstartPKI, client: QuickstartPKI | None = None) -> MemoryTLS:
    client = client or pki
    context = agent_context(pki.ca_cert, client.client_cert, client.client_key)
    return MemoryTLS(context, server_side=False, server_hostname="localhost", peer="server")


def server_side(pki: QuickstartPKI, cert_from: QuickstartPKI | None = None) -> MemoryTLS:
    cert_from = cert_from or pki
    context = server_context(pki.ca_cert, cert_from.server_cert, cert_from.server_key)
    return MemoryTLS(context, server_side=True, peer="agent")


def xfer(a: MemoryTLS, s: MemoryTLS) -> tuple[bytes, bytes]:
    """Move records both ways until quiet; return the plaintext (at agent, at server)."""
    at_agent, at_server = b"", b""
    for _ in range(100):
        to_server, to_agent = a.ciphertext_to_send(), s.ciphertext_to_send()
        if not to_server and not to_agent:
            return at_agent, at_server
        if to_server:
            at_server += s.receive(to_server)
        if to_agent:
            at_agent += a.receive(to_agent)
    raise AssertionError("never went quiet")


def test_mutual_tls13_handshake_with_alpn_h2_and_the_client_certificate(
    pki: QuickstartPKI,
) -> None:
    a, s = agent_side(pki), server_side(pki)
    a.start()
    xfer(a, s)
    assert a.handshake_complete and s.handshake_complete
    assert a.ssl_object.version() == "TLSv1.3"
    assert a.ssl_object.selected_alpn_protocol() == "h2"
    peer = s.getpeercert()
    assert peer is not None and peer["subject"] == ((("commonName", "quickstart"),),)


def test_bytes_written_before_the_handshake_wait_for_it_and_large_writes_arrive_whole(
    pki: QuickstartPKI,
) -> None:
    a, s = agent_side(pki), server_side(pki)
    a.start()
    a.send(b"early ")
    a.send(b"bird")
    assert not a.handshake_complete
    _, at_server = xfer(a, s)
    assert at_server == b"early bird"
    blob = os.urandom(3 * 1024 * 1024)
    s.send(blob)
    at_agent, _ = xfer(a, s)
    assert at_agent == blob


def test_the_ciphertext_hides_the_plaintext(pki: QuickstartPKI) -> None:
    a, s = agent_side(pki), server_side(pki)
    a.start()
    xfer(a, s)
    a.send(b"MARKER-secret-request-line")
    wire = a.ciphertext_to_send()
    assert b"MARKER" not in wire
    assert s.receive(wire) == b"MARKER-secret-request-line"


def test_a_server_certificate_from_another_ca_fails_the_agents_handshake(
    pki: QuickstartPKI, stranger: QuickstartPKI
) -> None:
    a, s = agent_side(pki), server_side(stranger)  # the stranger's server, our agent
    a.start()
    with pytest.raises(HandshakeError, match="cannot verify the certificate of server"):
        xfer(a, s)


def test_a_client_certificate_from_another_ca_is_refused_by_the_server(
    pki: QuickstartPKI, stranger: QuickstartPKI
) -> None:
    # Our server, and an agent that trusts our CA but holds the stranger's client cert.
    a, s = agent_side(pki, client=stranger), server_side(pki)
    a.start()
    s.receive(a.ciphertext_to_send())  # ClientHello
    a.receive(s.ciphertext_to_send())  # ServerHello..Finished: TLS 1.3 client is done here
    assert a.handshake_complete
    with pytest.raises(HandshakeError, match="cannot verify the certificate of agent"):
        s.receive(a.ciphertext_to_send())  # the certificate the server cannot verify
    alert = s.ciphertext_to_send()
    assert alert  # the alert is ready to go back
    with pytest.raises(TunnelClosed, match="TLS connection with server failed"):
        a.receive(alert)


def test_close_notify_ends_the_peer_cleanly(pki: QuickstartPKI) -> None:
    a, s = agent_side(pki), server_side(pki)
    a.start()
    xfer(a, s)
    s.send(b"last words")
    s.close()
    at_agent, _ = xfer(a, s)
    assert at_agent == b"last words"
    assert a.peer_closed


def test_close_before_the_handshake_is_a_no_op(pki: QuickstartPKI) -> None:
    a = agent_side(pki)
    a.close()
    assert a.ciphertext_to_send() == b""
