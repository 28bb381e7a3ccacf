"""Revocation: the CA's certificate revocation list, ``DIR/crl.pem``.

``revoke`` adds a certificate's serial and re-signs the list; ``refresh_crl``
re-signs it unchanged. Each signing gives the list ``CRL_VALIDITY`` (30 days)
more life and the next CRL number; earlier entries are always kept. A list not
signed by the directory's CA is never extended: it is reported instead.
``revoked_serials`` reads a CRL's serials (what the server checks live tunnels
against after a reload).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from fluidity.errors import CertificateError
from fluidity.pki.cadir import (
    BACKDATE,
    CA,
    CRL_FILE,
    PEM,
    check_name,
    load_ca,
    load_cert,
    load_crl,
    utc_now,
    write_file,
)

CRL_VALIDITY = dt.timedelta(days=30)


def revoke(directory: Path, name: str) -> Path:
    """Add ``DIR/NAME.crt``'s serial to ``DIR/crl.pem`` and re-sign it; return its path.

    Earlier entries are kept; revoking twice is harmless. The CRL is valid for
    30 days: revoke again or call ``refresh_crl`` before then, or servers that
    check it will refuse every client.
    """
    check_name(name)
    ca = load_ca(directory)
    cert_path = directory / f"{name}.crt"
    if not cert_path.exists():
        raise CertificateError(
            f"no certificate {cert_path} to revoke: see `fluidity certs list --dir {directory}`"
        )
    cert = load_cert(cert_path)
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(f"{cert_path} was not issued by the CA in {directory}") from exc
    return _write_crl(directory, ca, add_serial=cert.serial_number)


def refresh_crl(directory: Path) -> Path:
    """Write ``DIR/crl.pem`` anew (empty if nothing is revoked) with 30 more days of validity."""
    return _write_crl(directory, load_ca(directory), add_serial=None)


def revoked_serials(pem: bytes, where: str = "the CRL") -> frozenset[int]:
    """The serial numbers listed in the PEM CRL ``pem``; CertificateError if it is not one."""
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise CertificateError(f"{where} is not a PEM CRL ({exc}): fix or remove it") from exc
    return frozenset(entry.serial_number for entry in crl)


def _write_crl(directory: Path, ca: CA, *, add_serial: int | None) -> Path:
    old = load_crl(directory)
    if old is not None and not old.is_signature_valid(ca.key.public_key()):
        raise CertificateError(
            f"{directory / CRL_FILE} was not signed by the CA in {directory}: "
            "delete it, then revoke the certificates again"
        )
    entries = list(old) if old is not None else []
    number = _crl_number(old) + 1
    now = utc_now()
    if add_serial is not None and add_serial not in {e.serial_number for e in entries}:
        entries.append(
            x509.RevokedCertificateBuilder().serial_number(add_serial).revocation_date(now).build()
        )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    path = directory / CRL_FILE
    write_file(path, builder.sign(ca.key, hashes.SHA256()).public_bytes(PEM), 0o644)
    return path


def _crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0
