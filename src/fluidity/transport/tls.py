"""The TLS contexts: the tunnel's two (agent, server) and the WebSocket transport's outer ones.

The tunnel's contexts refuse anything below TLS 1.3, both present a certificate
from the private CA and verify the peer's against it, and both speak ALPN
``h2``. There is no switch to turn verification off.

The WebSocket transport wraps that same TLS 1.3 mutual authentication in an
ordinary HTTPS connection (the *outer* layer) that a TLS-inspecting proxy may
end and re-encrypt. The outer layer proves nothing the inner one relies on, so
it accepts TLS 1.2 (older inspecting proxies) and verifies the usual way:
system trust store, plus the private CA and any corporate CA the agent names.

Certificate material comes as paths or as inline PEM (from environment
variables in containers). ``ssl`` loads chains and CRLs only from files, so
inline PEM is written to a private temporary file for the moment of loading.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from fluidity.errors import CertificateError, ConfigError
from fluidity.pki.keyfiles import check_private_key_file

ALPN = "h2"
ALPN_HTTP1 = "http/1.1"


class PemSource(Protocol):
    """A certificate, key, CA or CRL: a file, or PEM text held in memory."""

    @property
    def path(self) -> Path | None: ...

    def read_bytes(self) -> bytes: ...


Source = Path | PemSource


def server_context(
    ca: Source, cert: Source, key: Source, crl: Source | None = None
) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate issued by ``ca``.

    With ``crl``, revoked client certificates are refused at the handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.verify_mode = ssl.CERT_REQUIRED
    # No session tickets, so no TLS 1.3 resumption: every connection presents its
    # certificate and is checked against the CA and CRL loaded *now*. A ticket
    # issued before a revocation or a CA rotation would otherwise still get in.
    context.num_tickets = 0
    _load_chain(context, cert, key)
    _load_verify(context, ca, "tls.ca")
    if crl is not None:
        # Python applies a CRL only when it is loaded from a file as "cafile".
        _load_verify(context, crl, "tls.crl")
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def listener_context(
    ca: Source,
    cert: Source,
    key: Source,
    crl: Source | None = None,
    *,
    websocket: bool,
    https_proxy: bool = False,
) -> ssl.SSLContext:
    """The main listener's context: ``server_context``, or with ``websocket`` one that
    also accepts the WebSocket transport on the same port.

    ALPN tells the two apart, and the server checks the outcome per connection:
    ``h2`` must be TLS 1.3 with a verified client certificate (so the certificate
    becomes optional at the handshake and *required* by the server right after);
    ``http/1.1`` (or no ALPN: some proxies send none) carries a WebSocket whose
    binary messages hold the inner TLS 1.3 handshake, made with ``server_context``.
    A presented certificate is always verified (and checked against the CRL).
    With ``https_proxy`` the same holds for ``http/1.1``: the server's HTTPS proxy
    checks the certificate (or the credentials) itself, after the handshake.
    """
    context = server_context(ca, cert, key, crl)
    if websocket:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    if websocket or https_proxy:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.set_alpn_protocols([ALPN, ALPN_HTTP1])
    return context


def websocket_context(cert: Source, key: Source) -> ssl.SSLContext:
    """Outer server context for the WebSocket transport alone, with its own (typically
    publicly trusted) certificate: TLS 1.2 or 1.3, ALPN ``http/1.1``, no client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_HTTP1])
    context.options |= ssl.OP_NO_COMPRESSION
    _load_chain(context, cert, key)
    return context


def outer_agent_context(ca: Source, extra_ca: Source | None = None) -> ssl.SSLContext:
    """The agent's outer context for the WebSocket transport: verifies the name against
    the system trust store, the private CA ``ca`` and ``extra_ca`` (a corporate CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols([ALPN_HTTP1])
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load_verify(context, ca, "tls.ca")
    if extra_ca is not None:
        _load_verify(context, extra_ca, "websocket.outer_ca")
    return context


def present_by_name(context: ssl.SSLContext, other: ssl.SSLContext, names: Iterable[str]) -> None:
    """Make ``context`` switch to ``other`` (certificate, ALPN, verification) for clients
    whose SNI matches one of ``names`` (``*.example.com`` matches one label)."""
    patterns = tuple(name.lower() for name in names)

    def pick(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if server_name is not None and any(name_matches(p, server_name) for p in patterns):
            sslobj.context = other

    context.sni_callback = pick


def certificate_names(source: Source) -> frozenset[str]:
    """The DNS names (subjectAltName) of the first certificate in ``source``, lower case."""
    # Imported here, only with websocket.cert: the cryptography bindings cost about
    # 15 MB that a server without it never needs (see tests/test_lean_imports.py).
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(_read(source))
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    except ValueError as exc:
        raise CertificateError(f"cannot read certificate {describe(source)}: {exc}") from exc
    return frozenset(name.lower() for name in san.value.get_values_for_type(x509.DNSName))


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 matching of one DNS name: exact, or a leading ``*`` for one label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = name.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == name


def agent_context(ca: Source, cert: Source, key: Source) -> ssl.SSLContext:
    """TLS 1.3 client context that presents our certificate and verifies the server's name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _load_chain(context, cert, key)
    _load_verify(context, ca, "tls.ca")
    return context


def describe(source: Source) -> str:
    """How to name the source in a message: its path, or 'inline PEM'."""
    path = source if isinstance(source, Path) else source.path
    return str(path) if path is not None else "inline PEM"


def _read(source: Source) -> bytes:
    if isinstance(source, Path):
        try:
            return source.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror}") from exc
    return source.read_bytes()


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # RFC 5280 checks in full (the default from Python 3.13); fluidity's CA issues
    # certificates and CRLs that pass them.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_alpn_protocols([ALPN])
    context.options |= ssl.OP_NO_COMPRESSION


def _load_chain(context: ssl.SSLContext, cert: Source, key: Source) -> None:
    key_path = key if isinstance(key, Path) else key.path
    if key_path is not None:
        check_private_key_file(key_path)
    with _as_file(cert) as cert_file, _as_file(key) as key_file:
        try:
            context.load_cert_chain(cert_file, key_file)
        except FileNotFoundError as exc:
            raise ConfigError(f"tls: file not found: {exc.filename}") from exc
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError(
                f"cannot load certificate {describe(cert)} with key {describe(key)}: {exc}; "
                "check that both are PEM and that the key belongs to the certificate"
            ) from exc


def _load_verify(context: ssl.SSLContext, source: Source, key: str) -> None:
    with _as_file(source) as path:
        try:
            context.load_verify_locations(cafile=path)
        except FileNotFoundError as exc:
            raise ConfigError(f"{key}: file not found: {path}") from exc
        except (ssl.SSLError, OSError) as exc:
            raise CertificateError(f"{key}: cannot load {describe(source)}: {exc}") from exc


@contextlib.contextmanager
def _as_file(source: Source) -> Iterator[str]:
    """A path ``ssl`` can load: the source's own file, or a private temporary copy."""
    path = source if isinstance(source, Path) else source.path
    if path is not None:
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="fluidity-") as directory:
        target = os.path.join(directory, "material.pem")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(source.read_bytes())
        yield target


# OpenSSL's X509_V_ERR_* codes for the verification failures worth telling apart.
_VERIFY_REASONS = {10: "certificate_expired", 23: "certificate_revoked"}


def handshake_failure_reason(exc: BaseException) -> str:
    """A short, stable label for why a TLS handshake failed (logs and metrics).

    ``certificate_*`` name the *peer's* certificate: missing, untrusted (not
    issued by our CA), expired or revoked. ``not_tls`` is a peer that spoke
    something else (plain HTTP, a port scanner); ``protocol_version`` one that
    offered no TLS 1.3; ``peer_alert`` a peer that refused us with an alert
    (it does not trust our certificate); ``timeout`` and ``connection_lost``
    a handshake that never finished.
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "certificate_untrusted")
    if isinstance(exc, ssl.SSLError):
        return _ssl_reason(str(exc.reason or exc))
    return "connection_lost"


def _ssl_reason(reason: str) -> str:
    reason = reason.upper()
    if "CERTIFICATE_REQUIRED" in reason or "DID_NOT_RETURN_A_CERTIFICATE" in reason:
        return "certificate_missing"
    if "HTTP_REQUEST" in reason or "WRONG_VERSION_NUMBER" in reason or "RECORD" in reason:
        return "not_tls"
    if "VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
        return "protocol_version"
    if "ALERT" in reason:
        return "peer_alert"
    if "APPLICATION_PROTOCOL" in reason:
        return "no_alpn"
    return "tls_error"
