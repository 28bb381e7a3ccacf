"""Issuing: create the private CA, issue server and client certificates.

The files land in a CA directory laid out as ``fluidity.pki.cadir`` describes
(``ca.crt``/``ca.key``, then ``NAME.crt``/``NAME.key`` per certificate), keys
owner-only from the first byte. Revoking is ``fluidity.pki.revocation``;
listing is ``fluidity.pki.inventory``. ECDSA P-256 keys are the default.

Certificates are shaped so that Python's ``ssl`` (OpenSSL) accepts them even
with ``VERIFY_X509_STRICT`` (the default from Python 3.13): the CA has a critical
basicConstraints and a subject key identifier; leaves carry an authority key
identifier, a critical keyUsage, an extendedKeyUsage (``serverAuth`` or
``clientAuth``, never both, so a stolen server key cannot log in as a client)
and subjectAltNames. Serials are random, positive and 128 bits long.

``ensure_quickstart_pki`` makes (or reuses) a complete PKI in one call.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluidity.errors import CertificateError
from fluidity.pki.cadir import (
    BACKDATE,
    CRL_FILE,
    PEM,
    IssuedFiles,
    ca_files,
    check_name,
    leaf_files,
    load_ca,
    load_cert,
    make_private_directory,
    refuse_to_replace,
    utc_now,
    write_file,
    write_key,
)

CLIENT_URI_PREFIX = "fluidity://client/"
"""A client certificate for NAME carries the SAN URI ``fluidity://client/NAME``."""

QUICKSTART_SERVER = "server"
QUICKSTART_CLIENT = "quickstart"
_DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class QuickstartPKI:
    """The files of a ready-to-use PKI made by ``ensure_quickstart_pki``."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


# --- public operations -------------------------------------------------------


def init_ca(
    directory: Path, *, force: bool = False, common_name: str = "Fluidity CA", days: int = 3650
) -> IssuedFiles:
    """Create a new CA in ``directory`` (made 0700 if new): ``ca.crt`` and ``ca.key``.

    Refuses to replace an existing CA unless ``force``; replacing it also deletes
    ``crl.pem``, which belonged to the old CA. Every certificate the old CA signed
    stops being accepted, so re-issue them.
    """
    files = ca_files(directory)
    make_private_directory(directory)
    refuse_to_replace([files.cert, files.key], force, "the CA and every certificate it signed")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _base_builder(subject, subject, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    write_key(files.key, key)
    write_file(files.cert, cert.public_bytes(PEM), 0o644)
    (directory / CRL_FILE).unlink(missing_ok=True)
    return files


def issue_server(
    directory: Path,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    force: bool = False,
    days: int = 825,
) -> IssuedFiles:
    """Issue ``DIR/NAME.crt`` and ``DIR/NAME.key`` for a TLS server (EKU serverAuth).

    The SANs are ``dns`` and ``ips``; when both are empty, ``localhost`` and
    ``127.0.0.1``. The subject is ``CN=NAME``.
    """
    if not dns and not ips:
        dns, ips = ("localhost",), ("127.0.0.1",)
    sans: list[x509.GeneralName] = [x509.DNSName(_check_dns_name(d)) for d in dns]
    sans += [x509.IPAddress(_parse_ip(ip)) for ip in ips]
    return _issue_leaf(directory, name, ExtendedKeyUsageOID.SERVER_AUTH, sans, force, days)


def issue_client(
    directory: Path, name: str, *, force: bool = False, days: int = 825
) -> IssuedFiles:
    """Issue ``DIR/NAME.crt`` and ``DIR/NAME.key`` for a client (EKU clientAuth).

    The SANs are the URI ``fluidity://client/NAME`` and, when NAME is a valid
    DNS name, the DNS name NAME, so an identity allow-list can match either.
    """
    check_name(name)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name)]
    if _is_dns_name(name):
        sans.append(x509.DNSName(name))
    return _issue_leaf(directory, name, ExtendedKeyUsageOID.CLIENT_AUTH, sans, force, days)


def ensure_quickstart_pki(directory: Path) -> QuickstartPKI:
    """Make (or reuse) a CA, a server cert ``server`` and a client cert ``quickstart``.

    The server certificate is for ``localhost``, ``127.0.0.1`` and ``::1``. On
    later runs existing files are reused untouched; only what is missing,
    expired, or signed by another CA is issued again (a new CA re-issues both).
    """
    ca = ca_files(directory)
    new_ca = not _usable(ca, issuer=None)
    if new_ca:
        init_ca(directory, force=True)
    ca_cert = load_cert(ca.cert)
    server = leaf_files(directory, QUICKSTART_SERVER)
    if new_ca or not _usable(server, issuer=ca_cert):
        issue_server(
            directory, QUICKSTART_SERVER, dns=["localhost"], ips=["127.0.0.1", "::1"], force=True
        )
    client = leaf_files(directory, QUICKSTART_CLIENT)
    if new_ca or not _usable(client, issuer=ca_cert):
        issue_client(directory, QUICKSTART_CLIENT, force=True)
    return QuickstartPKI(ca.cert, server.cert, server.key, client.cert, client.key)


# --- issuing -----------------------------------------------------------------


def _issue_leaf(
    directory: Path,
    name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    force: bool,
    days: int,
) -> IssuedFiles:
    check_name(name)
    ca = load_ca(directory)
    files = leaf_files(directory, name)
    refuse_to_replace([files.cert, files.key], force, f"the certificate {name}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _base_builder(subject, ca.cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    cert = builder.sign(ca.key, hashes.SHA256())
    write_key(files.key, key)
    write_file(files.cert, cert.public_bytes(PEM), 0o644)
    return files


def _base_builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    if days < 1:
        raise CertificateError(f"validity must be at least 1 day, not {days}: fix --days")
    now = utc_now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        # 128 random bits with the top one set: positive, unpredictable, and
        # always 16 bytes long so serials line up in listings.
        .serial_number((1 << 127) | secrets.randbits(127))
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # An ECDSA leaf only ever signs TLS handshakes (digital_signature); the CA
    # only signs certificates and CRLs.
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _usable(files: IssuedFiles, *, issuer: x509.Certificate | None) -> bool:
    """True if both files exist, the cert is unexpired and (if given) signed by ``issuer``."""
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        if issuer is not None:
            cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return utc_now() < cert.not_valid_after_utc


# --- subject alternative names -----------------------------------------------


def _is_dns_name(value: str) -> bool:
    labels = value.split(".")
    return len(value) <= 253 and all(_DNS_LABEL_RE.fullmatch(label) for label in labels)


def _check_dns_name(value: str) -> str:
    if _is_ip(value):
        raise CertificateError(f"{value!r} is an IP address, not a DNS name: pass it with --ip")
    bare = value.removeprefix("*.")
    if not _is_dns_name(bare):
        raise CertificateError(
            f"bad DNS name {value!r} for --dns: use labels of letters, digits and '-' "
            "separated by dots (optionally starting with '*.')"
        )
    return value


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise CertificateError(
            f"bad IP address {value!r} for --ip: give an IPv4 or IPv6 address like "
            "203.0.113.7 or ::1 (use --dns for names)"
        ) from None
