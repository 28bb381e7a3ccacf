"""The CA directory: where each file lives, how it is read, how it is written.

Everything lives in one directory::

    DIR/ca.crt  ca.key        the CA (the key signs everything below)
    DIR/NAME.crt  NAME.key    one pair per server or client certificate
    DIR/crl.pem               revoked serials, signed by the CA (after the first revoke)

Readers (``load_ca``, ``load_cert``, ``load_crl``) raise CertificateError naming
the file and the fix. Writers never leave a half-written or briefly
world-readable file: every file is written to a fresh temporary file opened
with ``O_EXCL`` and its final mode, then renamed over the target, so private
keys are owner-only (0600) from the first byte.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fluidity.errors import CertificateError
from fluidity.pki.keyfiles import check_private_key_file

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CRL_FILE = "crl.pem"
PEM = serialization.Encoding.PEM
# Certificates and CRLs start a little in the past so a peer whose clock runs
# behind ours does not reject one issued a second ago as "not yet valid".
BACKDATE = dt.timedelta(minutes=5)
_RESERVED_NAMES = frozenset({"ca", "crl"})
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class IssuedFiles:
    """The certificate and private key files one call wrote."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CA:
    """The CA certificate with its private key, checked to belong together."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def ca_files(directory: Path) -> IssuedFiles:
    """Where the CA's certificate and key live in ``directory``."""
    return IssuedFiles(directory / CA_CERT_FILE, directory / CA_KEY_FILE)


def leaf_files(directory: Path, name: str) -> IssuedFiles:
    """Where the certificate and key called ``name`` live in ``directory``."""
    return IssuedFiles(directory / f"{name}.crt", directory / f"{name}.key")


def check_name(name: str) -> str:
    """``name`` if it can name the files NAME.crt and NAME.key; CertificateError if not."""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise CertificateError(
            f"bad certificate name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (it names the files NAME.crt and NAME.key)"
        )
    if name.lower() in _RESERVED_NAMES:
        raise CertificateError(f"certificate name {name!r} is reserved for the CA's own files")
    return name


def utc_now() -> dt.datetime:
    """The current time, in UTC, as certificates and CRLs record it."""
    return dt.datetime.now(dt.UTC)


# --- reading -----------------------------------------------------------------


def load_ca(directory: Path) -> CA:
    """The CA of ``directory``; CertificateError if it is missing, unreadable,
    readable by others, not ECDSA, or its key does not match its certificate."""
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists():
        raise CertificateError(
            f"no CA in {directory}: run `fluidity certs init --dir {directory}` first"
        )
    cert = load_cert(cert_path)
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
    return CA(cert, key)


def load_cert(path: Path) -> x509.Certificate:
    """The PEM certificate in ``path``; CertificateError if unreadable or not one."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError(
            f"{path} is not a PEM certificate ({exc}): fix or remove it"
        ) from exc


def load_crl(directory: Path) -> x509.CertificateRevocationList | None:
    """The CRL of ``directory``, or None before the first revoke."""
    path = directory / CRL_FILE
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CertificateError(f"cannot read the CRL {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM CRL ({exc}): fix or remove it") from exc


# --- writing -----------------------------------------------------------------


def refuse_to_replace(paths: Iterable[Path], force: bool, what: str) -> None:
    """CertificateError if any of ``paths`` exists, unless ``force``."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise CertificateError(
                f"{path} already exists: refusing to replace {what}; pass --force to replace it"
            )


def make_private_directory(directory: Path) -> None:
    """Create ``directory`` owner-only (0700) unless it already exists."""
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


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` unencrypted (PEM, PKCS#8) to ``path``, owner-only."""
    pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_file(path, pem, 0o600)


def write_file(path: Path, data: bytes, mode: int) -> None:
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
