"""Small pieces of the WebSocket transport's glue: delivering to buffered protocols,
and choosing a certificate by name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fluidity.pki.certs import init_ca, issue_server
from fluidity.transport.innertransport import deliver
from fluidity.transport.tls import certificate_names, name_matches


class SmallBuffers(asyncio.BufferedProtocol):
    """Offers 7-byte buffers: a delivery must loop, in order, without losing a byte."""

    def __init__(self) -> None:
        self.received = bytearray()
        self._buffer = bytearray(7)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self._buffer[:nbytes]


class Plain(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, data: bytes) -> None:
        self.received += data


def test_deliver_fills_a_buffered_protocol_in_order() -> None:
    protocol = SmallBuffers()
    data = bytes(range(256)) * 3
    deliver(protocol, data)
    assert protocol.received == data


def test_deliver_calls_data_received_otherwise() -> None:
    protocol = Plain()
    deliver(protocol, b"hello")
    assert protocol.received == b"hello"


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("ws.example.com", "ws.example.com", True),
        ("ws.example.com", "WS.Example.COM.", True),
        ("ws.example.com", "tunnel.example.com", False),
        ("*.example.com", "ws.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
    ],
)
def test_name_matching_follows_rfc6125(pattern: str, name: str, matches: bool) -> None:
    assert name_matches(pattern, name) is matches


def test_certificate_names_are_its_dns_sans(pki_dir: Path) -> None:
    dns = ["WS.example.com", "*.cdn.example.com"]
    files = issue_server(pki_dir, "pub", dns=dns, ips=["1.2.3.4"])
    assert certificate_names(files.cert) == frozenset({"ws.example.com", "*.cdn.example.com"})


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path)
    return tmp_path
