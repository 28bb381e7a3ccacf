"""The inventory of a CA directory: what each certificate file is, and its state.

``list_certificates`` describes every ``*.crt`` of the directory as a
``CertInfo``: subject, kind (CA, server, client, other, from its
basicConstraints and extendedKeyUsage), serial, expiry, and whether
``crl.pem`` revokes it. It only reads; ``fluidity certs list`` prints it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fluidity.errors import CertificateError
from fluidity.pki.cadir import load_cert, load_crl, utc_now

Kind = Literal["ca", "server", "client", "other"]


@dataclass(frozen=True)
class CertInfo:
    """One certificate file of the CA directory, as ``list_certificates`` reads it."""

    path: Path
    subject: str
    kind: Kind
    serial: str
    not_after: dt.datetime
    revoked: bool

    def expired(self, now: dt.datetime | None = None) -> bool:
        """True once ``now`` (default: the current UTC time) is past ``not_after``."""
        return (now or utc_now()) > self.not_after

    def expires_soon(self, within: dt.timedelta, now: dt.datetime | None = None) -> bool:
        """True while not yet expired but ending within ``within`` of ``now``."""
        now = now or utc_now()
        return not self.expired(now) and self.not_after - now <= within


def list_certificates(directory: Path) -> list[CertInfo]:
    """Describe every ``*.crt`` in ``directory``, sorted by file name.

    ``revoked`` is true when the serial is in ``crl.pem``. A ``.crt`` that is
    not a PEM certificate raises CertificateError naming it.
    """
    if not directory.is_dir():
        raise CertificateError(f"{directory} is not a directory: check --dir")
    crl = load_crl(directory)
    revoked = {entry.serial_number for entry in crl} if crl is not None else set()
    infos = []
    for path in sorted(directory.glob("*.crt")):
        cert = load_cert(path)
        infos.append(
            CertInfo(
                path=path,
                subject=cert.subject.rfc4514_string(),
                kind=_kind_of(cert),
                serial=format(cert.serial_number, "x"),
                not_after=cert.not_valid_after_utc,
                revoked=cert.serial_number in revoked,
            )
        )
    return infos


def crl_next_update(directory: Path) -> dt.datetime | None:
    """When ``crl.pem`` in ``directory`` must be renewed (its nextUpdate, UTC); None
    without a CRL, or for one that names no next update."""
    crl = load_crl(directory)
    return crl.next_update_utc if crl is not None else None


def _kind_of(cert: x509.Certificate) -> Kind:
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "other"
    if ExtendedKeyUsageOID.SERVER_AUTH in usages:
        return "server"
    return "client" if ExtendedKeyUsageOID.CLIENT_AUTH in usages else "other"
