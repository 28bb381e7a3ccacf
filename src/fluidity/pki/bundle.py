"""PKCS#12 bundles: a client's key, certificate and the CA in one password-protected file.

Browsers and operating-system certificate stores (Chromium through the system
store, Firefox, macOS Keychain, Windows) import a client certificate as a
``.p12`` file, not as PEM files. ``write_pkcs12`` writes ``NAME.p12`` next to
``NAME.crt``/``NAME.key``, owner-only like a key, encrypted with the given
password (AES-256 with PBKDF2-SHA256 and a SHA-256 MAC: what current stores
read; an empty password is refused, since the file holds the private key).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from fluidity.errors import CertificateError
from fluidity.pki.cadir import ca_files, check_name, leaf_files, load_cert, write_file

# PBKDF2 rounds: slows guessing a weak password; importing the file stays instant.
KDF_ROUNDS = 100_000


def write_pkcs12(directory: Path, name: str, password: str) -> Path:
    """Write ``DIR/NAME.p12`` (mode 0600) from ``NAME.crt``, ``NAME.key`` and the CA's
    certificate, protected by ``password``; return its path.

    CertificateError if the password is empty or the files are missing or unreadable.
    """
    check_name(name)
    if not password:
        raise CertificateError(
            "the PKCS#12 bundle needs a password (it holds the private key): "
            "type one at the prompt, or set --password-env"
        )
    files = leaf_files(directory, name)
    cert = load_cert(files.cert)
    ca_cert = load_cert(ca_files(directory).cert)
    key = _load_key(files.key)
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode("utf-8"))
    )
    data = pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"), key, cert, [ca_cert], encryption
    )
    path = directory / f"{name}.p12"
    write_file(path, data, 0o600)
    return path


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CertificateError(f"cannot read private key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path} is not an ECDSA key, as the CA tool issues")
    return key
