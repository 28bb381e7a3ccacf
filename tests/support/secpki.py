"""Certificates good and bad for the security tests, and a raw TLS probe of the server.

``make_security_pki`` builds, with the real CA tool, a CA with a server
certificate and clients ``alice``, ``bob`` and ``carol``, plus a second CA with
its own client ``mallory``, and hand-made client certificates that are expired
or not yet valid (the CA tool refuses to make those).

``probe`` connects to a server with a raw ``ssl`` client and reads after the
handshake: a TLS 1.3 client finishes its side of the handshake before the
server has checked its certificate, so a refusal only shows on the first read
(an alert, or the connection closing). An accepted client reads the server's
HTTP/2 SETTINGS frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluidity.pki import certs
from fluidity.pki.certs import QuickstartPKI

H2_SETTINGS = 0x4
WAIT = 10.0


@dataclass(frozen=True)
class SecurityPKI:
    """A CA directory with a server and several clients, and a foreign CA directory."""

    directory: Path
    other: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def quickstart(self, client: str = "alice") -> QuickstartPKI:
        """The files as a QuickstartPKI, for the harness's config builders."""
        return QuickstartPKI(
            self.ca, self.cert("server"), self.key("server"), self.cert(client), self.key(client)
        )


def make_security_pki(root: Path) -> SecurityPKI:
    directory, other = root / "ca", root / "other-ca"
    certs.init_ca(directory)
    certs.issue_server(directory, "server", dns=["localhost"], ips=["127.0.0.1", "::1"])
    for name in ("alice", "bob", "carol"):
        certs.issue_client(directory, name)
    now = dt.datetime.now(dt.UTC)
    issue_client_with_validity(
        directory, "expired", now - dt.timedelta(days=30), now - dt.timedelta(days=1)
    )
    issue_client_with_validity(
        directory, "future", now + dt.timedelta(days=1), now + dt.timedelta(days=30)
    )
    certs.init_ca(other, common_name="Someone else's CA")
    certs.issue_client(other, "mallory")
    return SecurityPKI(directory, other)


def issue_client_with_validity(
    directory: Path, name: str, not_before: dt.datetime, not_after: dt.datetime
) -> None:
    """Write NAME.crt/NAME.key: a client certificate of the CA valid only in the given span."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:test:{name}")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def client_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    tls12_only: bool = False,
) -> ssl.SSLContext:
    """A client context trusting ``ca``, presenting ``cert`` if given; TLS 1.3 unless told."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


@dataclass(frozen=True)
class Probe:
    """What a raw TLS client saw: accepted (the server spoke HTTP/2) or why not."""

    accepted: bool
    detail: str
    handshake_done: bool
    server_serial: int | None = None
    session_reusable: bool = False


async def probe(
    port: int, context: ssl.SSLContext, server_hostname: str = "localhost", host: str = "127.0.0.1"
) -> Probe:
    """Connect, finish the client's handshake, then read: see the module docstring."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=server_hostname),
            WAIT,
        )
    except (ssl.SSLError, ConnectionError) as exc:
        return Probe(False, f"handshake failed: {exc}", handshake_done=False)
    ssl_object = writer.get_extra_info("ssl_object")
    serial = int(ssl_object.getpeercert()["serialNumber"], 16)
    try:
        data = await asyncio.wait_for(reader.read(64), WAIT)
        reusable = ssl_object.session is not None and ssl_object.session.has_ticket
    except (ssl.SSLError, ConnectionError) as exc:
        return Probe(False, f"refused after the handshake: {exc}", True, serial)
    finally:
        writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), WAIT)
    if len(data) >= 4 and data[3] == H2_SETTINGS:
        return Probe(True, "the server spoke HTTP/2", True, serial, reusable)
    return Probe(False, f"closed after the handshake with {data!r}", True, serial)
