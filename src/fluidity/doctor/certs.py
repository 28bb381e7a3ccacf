"""Certificate checks: valid now, not expiring within 14 days, issued by the CA,
the key belongs to the certificate, and the names a server certificate carries.

Read with the ``cryptography`` package (the doctor is a command, not a
long-running process, so its 15 MB do not matter here). The verdicts reuse the
agent's own tests where it has them: ``issued_by_any`` is what the agent uses to
tell TLS inspection from a wrong CA, ``name_matches`` is RFC 6125 matching.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fluidity.agent.routes import issued_by_any
from fluidity.config.agent import AgentConfig
from fluidity.config.server import ServerConfig
from fluidity.config.values import FileOrPem
from fluidity.doctor.report import Finding
from fluidity.errors import ConfigError
from fluidity.transport.tls import name_matches

EXPIRY_WARNING = dt.timedelta(days=14)
NOT_ISSUED = "is not issued by tls.ca"

# How to get a new certificate of each kind, for the fixes.
_REISSUE = {
    "client": "issue a new one: fluidity certs client --dir CA_DIR --name {name} --force",
    "server": "issue a new one: fluidity certs server --dir CA_DIR --name {name} --dns HOST "
    "--force, then reload the server (SIGHUP)",
    "ca": "create a new CA (fluidity certs init --dir CA_DIR --force), re-issue every certificate",
    "public": "renew the public certificate with its issuer (e.g. your ACME client)",
}


def check_certificates(
    config: AgentConfig | ServerConfig, now: dt.datetime | None = None
) -> list[Finding]:
    """Every certificate in the config: the CA, our own (issued by the CA, key matches)
    and, on a server, the public WebSocket certificate."""
    now = now or dt.datetime.now(dt.UTC)
    findings: list[Finding] = []
    try:
        ca_pem = config.tls.ca.read_bytes()
        cas = x509.load_pem_x509_certificates(ca_pem)
    except (ConfigError, ValueError) as exc:
        return [Finding.problem("certificates", f"tls.ca: {exc}", "point tls.ca at the CA's PEM")]
    for ca in cas:
        findings.extend(_validity("tls.ca", "ca", ca, now))
    own = "client" if isinstance(config, AgentConfig) else "server"
    findings.extend(_leaf("tls.cert", own, config.tls.cert, config.tls.key, ca_pem, now))
    if isinstance(config, ServerConfig) and config.websocket.cert is not None:
        public = config.websocket.cert
        key = config.websocket.key or config.tls.key
        findings.extend(_leaf("websocket.cert", "public", public, key, None, now))
    return findings


def _leaf(
    key: str,
    kind: str,
    source: FileOrPem,
    key_source: FileOrPem,
    ca_pem: bytes | None,
    now: dt.datetime,
) -> Iterator[Finding]:
    try:
        cert = x509.load_pem_x509_certificates(source.read_bytes())[0]
    except (ConfigError, ValueError) as exc:
        yield Finding.problem("certificates", f"{key}: {exc}", f"point {key} at a PEM certificate")
        return
    yield from _validity(key, kind, cert, now)
    if ca_pem is not None:
        yield _chain(key, kind, cert, ca_pem)
    yield _key_matches(key, cert, key_source)
    if kind == "server":
        names = server_names(cert)
        shown = ", ".join(names) or "none"
        yield Finding.ok("certificates", f"{key} names the server as: {shown}")


def _validity(key: str, kind: str, cert: x509.Certificate, now: dt.datetime) -> Iterator[Finding]:
    subject = cert.subject.rfc4514_string() or "(no subject)"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    reissue = _REISSUE[kind].format(name=_common_name(cert))
    if now < start:
        yield Finding.problem(
            "certificates",
            f"{key} ({subject}) is not valid before {_when(start)}, and it is {_when(now)} here",
            "check this machine's clock (or wait until then)",
        )
    elif now > end:
        yield Finding.problem("certificates", f"{key} ({subject}) expired on {_when(end)}", reissue)
    elif end - now < EXPIRY_WARNING:
        days = (end - now).days
        yield Finding.warning(
            "certificates",
            f"{key} ({subject}) expires in {days} day(s), on {_when(end)}",
            reissue,
        )
    else:
        yield Finding.ok("certificates", f"{key} ({subject}) is valid until {_when(end)}")


def _chain(key: str, kind: str, cert: x509.Certificate, ca_pem: bytes) -> Finding:
    subject = cert.subject.rfc4514_string()
    if issued_by_any(cert, ca_pem):
        return Finding.ok("certificates", f"{key} ({subject}) is issued by tls.ca")
    issuer = cert.issuer.rfc4514_string() or "an unnamed issuer"
    return Finding.problem(
        "certificates",
        f"{key} ({subject}) {NOT_ISSUED}: its issuer is {issuer}, "
        "or a CA of that name made again with another key",
        "use the ca.crt of the CA directory that issued it as tls.ca, or "
        + _REISSUE[kind].format(name=_common_name(cert)),
    )


def _key_matches(key: str, cert: x509.Certificate, key_source: FileOrPem) -> Finding:
    key_name = "tls.key" if key == "tls.cert" else "websocket.key"
    try:
        private = serialization.load_pem_private_key(key_source.read_bytes(), password=None)
    except (ConfigError, ValueError, TypeError) as exc:
        return Finding.problem(
            "certificates", f"{key_name}: cannot read the private key: {exc}", "point it at PEM"
        )
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if private.public_key().public_bytes(pem, public) != cert.public_key().public_bytes(
        pem, public
    ):
        return Finding.problem(
            "certificates",
            f"{key_name} does not belong to {key}",
            f"give the key issued with the certificate ({key} and {key_name} come in pairs)",
        )
    return Finding.ok("certificates", f"{key_name} belongs to {key}")


def server_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of a certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def name_finding(cert: x509.Certificate, server_name: str) -> Finding:
    """Does the server's certificate (as presented) carry the name the agent verifies?"""
    names = server_names(cert)
    if any(name_matches(n, server_name) for n in names):
        return Finding.ok("server name", f"the server certificate is valid for {server_name}")
    return Finding.problem(
        "server name",
        f"the server certificate names {', '.join(names) or 'nothing'}, "
        f"not {server_name} (the name the agent verifies)",
        "set server_name in agent.yaml to one of those names, or issue the server a "
        f"certificate with --dns {server_name}",
    )


def _common_name(cert: x509.Certificate) -> str:
    """The subject's CN (the name the CA tool issued it under), else ``NAME``."""
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else "NAME"
    return value if isinstance(value, str) else "NAME"


def _when(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
