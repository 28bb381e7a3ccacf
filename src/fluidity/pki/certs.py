"""The private CA: create it, issue server and client certificates, revoke, list.

Everything lives in one directory::

    DIR/ca.crt  ca.key        the CA (the key signs everything below)
    DIR/NAME.crt  NAME.key    one pair per server or client certificate
    DIR/crl.pem               revoked serials, signed by the CA (after the first revoke)

Private keys are created owner-only (0600) from the first byte: every file is
written to a fresh temporary file opened with ``O_EXCL`` and its final mode,
then renamed over the target, so a reader never sees a half-written or
briefly world-readable file. ECDSA P-256 keys are the default.

Certificates are shaped so that Python's ``ssl`` (OpenSSL) accepts them even
with ``VERIFY_X509_STRICT`` (the default from Python 3.13): the CA has a critical
basicConstraints and a subject key identifier; leaves carry an authority key
identifier, a critical keyUsage, an extendedKeyUsage (``serverAuth`` or
``clientAuth``, never both, so a stolen server key cannot log in as a client)
and subjectAltNames. Serials are random, positive and 128 bits long.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluidity.errors import CertificateError
from fluidity.pki.keyfiles import check_private_key_file

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CRL_FILE = "crl.pem"
CLIENT_URI_PREFIX = "fluidity://client/"
"""A client certificate for NAME carries the SAN URI ``fluidity://client/NAME``."""

QUICKSTART_SERVER = "server"
QUICKSTART_CLIENT = "quickstart"
CRL_VALIDITY = dt.timedelta(days=30)
# Certificates start a little in the past so a peer whose clock runs behind
# ours does not reject a certificate issued a second ago as "not yet valid".
_BACKDATE = dt.timedelta(minutes=5)
_PEM = serialization.Encoding.PEM
_RESERVED_NAMES = frozenset({"ca", "crl"})
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")

Kind = Literal["ca", "server", "client", "other"]


@dataclass(frozen=True)
class IssuedFiles:
    """The certificate and private key files one call wrote."""

    cert: Path
    key: Path


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
        return (now or _now()) > self.not_after


@dataclass(frozen=True)
class QuickstartPKI:
    """The files of a ready-to-use PKI made by ``ensure_quickstart_pki``."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class _CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


# --- public operations -------------------------------------------------------


def init_ca(
    directory: Path, *, force: bool = False, common_name: str = "Fluidity CA", days: int = 3650
) -> IssuedFiles:
    """Create a new CA in ``directory`` (made 0700 if new): ``ca.crt`` and ``ca.key``.

    Refuses to replace an existing CA unless ``force``; replacing it also deletes
    ``crl.pem``, which belonged to the old CA. Every certificate the old CA signed
    stops being accepted, so re-issue them.
    """
    files = IssuedFiles(directory / CA_CERT_FILE, directory / CA_KEY_FILE)
    _make_private_directory(directory)
    _refuse_to_replace([files.cert, files.key], force, "the CA and every certificate it signed")
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
    _write_key(files.key, key)
    _write_file(files.cert, cert.public_bytes(_PEM), 0o644)
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
    _check_name(name)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name)]
    if _is_dns_name(name):
        sans.append(x509.DNSName(name))
    return _issue_leaf(directory, name, ExtendedKeyUsageOID.CLIENT_AUTH, sans, force, days)


def list_certificates(directory: Path) -> list[CertInfo]:
    """Describe every ``*.crt`` in ``directory``, sorted by file name.

    ``revoked`` is true when the serial is in ``crl.pem``. A ``.crt`` that is
    not a PEM certificate raises CertificateError naming it.
    """
    if not directory.is_dir():
        raise CertificateError(f"{directory} is not a directory: check --dir")
    crl = _load_crl(directory)
    revoked = {entry.serial_number for entry in crl} if crl is not None else set()
    infos = []
    for path in sorted(directory.glob("*.crt")):
        cert = _load_cert(path)
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


def revoke(directory: Path, name: str) -> Path:
    """Add ``DIR/NAME.crt``'s serial to ``DIR/crl.pem`` and re-sign it; return its path.

    Earlier entries are kept; revoking twice is harmless. The CRL is valid for
    30 days: revoke again or call ``refresh_crl`` before then, or servers that
    check it will refuse every client.
    """
    _check_name(name)
    ca = _load_ca(directory)
    cert_path = directory / f"{name}.crt"
    if not cert_path.exists():
        raise CertificateError(
            f"no certificate {cert_path} to revoke: see `fluidity certs list --dir {directory}`"
        )
    cert = _load_cert(cert_path)
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateError(f"{cert_path} was not issued by the CA in {directory}") from exc
    return _write_crl(directory, ca, add_serial=cert.serial_number)


def refresh_crl(directory: Path) -> Path:
    """Write ``DIR/crl.pem`` anew (empty if nothing is revoked) with 30 more days of validity."""
    return _write_crl(directory, _load_ca(directory), add_serial=None)


def revoked_serials(pem: bytes, where: str = "the CRL") -> frozenset[int]:
    """The serial numbers listed in the PEM CRL ``pem``; CertificateError if it is not one."""
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise CertificateError(f"{where} is not a PEM CRL ({exc}): fix or remove it") from exc
    return frozenset(entry.serial_number for entry in crl)


def ensure_quickstart_pki(directory: Path) -> QuickstartPKI:
    """Make (or reuse) a CA, a server cert ``server`` and a client cert ``quickstart``.

    The server certificate is for ``localhost``, ``127.0.0.1`` and ``::1``. On
    later runs existing files are reused untouched; only what is missing,
    expired, or signed by another CA is issued again (a new CA re-issues both).
    """
    ca_files = IssuedFiles(directory / CA_CERT_FILE, directory / CA_KEY_FILE)
    new_ca = not _usable(ca_files, issuer=None)
    if new_ca:
        init_ca(directory, force=True)
    ca_cert = _load_cert(ca_files.cert)
    server = _leaf_files(directory, QUICKSTART_SERVER)
    if new_ca or not _usable(server, issuer=ca_cert):
        issue_server(
            directory, QUICKSTART_SERVER, dns=["localhost"], ips=["127.0.0.1", "::1"], force=True
        )
    client = _leaf_files(directory, QUICKSTART_CLIENT)
    if new_ca or not _usable(client, issuer=ca_cert):
        issue_client(directory, QUICKSTART_CLIENT, force=True)
    return QuickstartPKI(ca_files.cert, server.cert, server.key, client.cert, client.key)


# --- issuing -----------------------------------------------------------------


def _issue_leaf(
    directory: Path,
    name: str,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    force: bool,
    days: int,
) -> IssuedFiles:
    _check_name(name)
    ca = _load_ca(directory)
    files = _leaf_files(directory, name)
    _refuse_to_replace([files.cert, files.key], force, f"the certificate {name}")
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
    _write_key(files.key, key)
    _write_file(files.cert, cert.public_bytes(_PEM), 0o644)
    return files


def _base_builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    if days < 1:
        raise CertificateError(f"validity must be at least 1 day, not {days}: fix --days")
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        # 128 random bits with the top one set: positive, unpredictable, and
        # always 16 bytes long so serials line up in listings.
        .serial_number((1 << 127) | secrets.randbits(127))
        .not_valid_before(now - _BACKDATE)
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


def _write_crl(directory: Path, ca: _CA, *, add_serial: int | None) -> Path:
    old = _load_crl(directory)
    if old is not None and not old.is_signature_valid(ca.key.public_key()):
        raise CertificateError(
            f"{directory / CRL_FILE} was not signed by the CA in {directory}: "
            "delete it, then revoke the certificates again"
        )
    entries = list(old) if old is not None else []
    number = _crl_number(old) + 1
    now = _now()
    if add_serial is not None and add_serial not in {e.serial_number for e in entries}:
        entries.append(
            x509.RevokedCertificateBuilder().serial_number(add_serial).revocation_date(now).build()
        )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    path = directory / CRL_FILE
    _write_file(path, builder.sign(ca.key, hashes.SHA256()).public_bytes(_PEM), 0o644)
    return path


def _crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


# --- reading -----------------------------------------------------------------


def _load_ca(directory: Path) -> _CA:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists():
        raise CertificateError(
            f"no CA in {directory}: run `fluidity certs init --dir {directory}` first"
        )
    cert = _load_cert(cert_path)
    check_private_key_file(key_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(
            f"cannot read the CA key {key_path} ({exc}): it must be an unencrypted PEM key "
            "readable by you"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(
            f"the CA key {key_path} is not an ECDSA key: use a CA made by `fluidity certs init`"
        )
    if key.public_key() != cert.public_key():
        raise CertificateError(
            f"the CA key {key_path} does not match {cert_path}: restore the right pair, "
            f"or start over with `fluidity certs init --dir {directory} --force`"
        )
    return _CA(cert, key)


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError(
            f"{path} is not a PEM certificate ({exc}): fix or remove it"
        ) from exc


def _load_crl(directory: Path) -> x509.CertificateRevocationList | None:
    path = directory / CRL_FILE
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CertificateError(f"cannot read the CRL {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM CRL ({exc}): fix or remove it") from exc


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
    return _now() < cert.not_valid_after_utc


# --- names, addresses, files ---------------------------------------------------


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise CertificateError(
            f"bad certificate name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (it names the files NAME.crt and NAME.key)"
        )
    if name.lower() in _RESERVED_NAMES:
        raise CertificateError(f"certificate name {name!r} is reserved for the CA's own files")
    return name


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


def _leaf_files(directory: Path, name: str) -> IssuedFiles:
    return IssuedFiles(directory / f"{name}.crt", directory / f"{name}.key")


def _refuse_to_replace(paths: Iterable[Path], force: bool, what: str) -> None:
    if force:
        return
    for path in paths:
        if path.exists():
            raise CertificateError(
                f"{path} already exists: refusing to replace {what}; pass --force to replace it"
            )


def _make_private_directory(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise CertificateError(f"{directory} exists and is not a directory: check --dir")
        return
    try:
        directory.mkdir(parents=True, mode=0o700)
        if os.name != "nt":  # windows: ACLs, not modes, protect the directory there
            directory.chmod(0o700)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise CertificateError(f"cannot create {directory}: {exc.strerror}") from exc


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_file(path, pem, 0o600)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace ``path`` with ``data``; the file is created with ``mode``.

    The bytes go to a new temporary file in the same directory, opened with
    O_EXCL and the final mode (so a key is never readable by others, not even
    for a moment), then ``os.replace`` swaps it in.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CertificateError(f"cannot write {path}: {exc.strerror}") from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
