"""The private CA, checked with real certificates and real TLS 1.3 handshakes.

Handshakes run between two ``ssl.SSLObject``s joined by memory BIOs: the same
OpenSSL verification a server and an agent do, with no sockets and no network.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import ssl
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fluidity.errors import CertificateError
from fluidity.pki import certs, inventory, keyfiles, revocation

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")


# --- helpers ------------------------------------------------------------------


class HandshakeFailed(Exception):
    """One side's handshake raised: ``side`` is "client" or "server"."""

    def __init__(self, side: str, error: ssl.SSLError) -> None:
        super().__init__(f"{side}: {error}")
        self.side = side
        self.error = error


def server_context(
    directory: Path, name: str = "server", crl: Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.3-only server context requiring a client certificate from the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(directory / f"{name}.crt", directory / f"{name}.key")
    ctx.load_verify_locations(cafile=directory / "ca.crt")
    if crl is not None:
        ctx.load_verify_locations(cafile=crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(directory: Path, name: str = "alice") -> ssl.SSLContext:
    """A TLS 1.3-only client context presenting NAME's certificate, checking the hostname."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(directory / f"{name}.crt", directory / f"{name}.key")
    ctx.load_verify_locations(cafile=directory / "ca.crt")
    return ctx


@dataclass
class TLSPair:
    """A client and a server ``SSLObject`` joined by memory BIOs."""

    client: ssl.SSLObject
    server: ssl.SSLObject
    bios: tuple[ssl.MemoryBIO, ssl.MemoryBIO, ssl.MemoryBIO, ssl.MemoryBIO]

    def pump(self) -> None:
        """Move what each side wrote to the other side."""
        client_in, client_out, server_in, server_out = self.bios
        server_in.write(client_out.read())
        client_in.write(server_out.read())

    def client_sends(self, data: bytes) -> bytes:
        """Send ``data`` from the client; return what the server reads."""
        self.client.write(data)
        self.pump()
        return self.server.read(len(data))


def handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, server_hostname: str = "localhost"
) -> TLSPair:
    """Run both handshakes to completion over memory BIOs; raise HandshakeFailed on error.

    In TLS 1.3 the client finishes first and the server checks the client's
    certificate one flight later, so we return only when both sides are done.
    """
    bios = (ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO())
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=server_hostname)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    pair = TLSPair(client, server, bios)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, tls in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    tls.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    raise HandshakeFailed(side, exc) from exc
        pair.pump()
        if all(done.values()):
            return pair
    raise AssertionError("the handshake did not finish in 10 rounds")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> list[object]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def write_expired_cert(directory: Path, name: str) -> None:
    """Replace NAME.crt with a client certificate, signed by the CA, that expired yesterday."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    leaf_key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(load_cert(directory / "ca.crt").subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    certs.init_ca(directory)
    return directory


@pytest.fixture
def pki(ca_dir: Path) -> Path:
    """A CA with a default server certificate "server" and clients "alice" and "bob"."""
    certs.issue_server(ca_dir, "server")
    certs.issue_client(ca_dir, "alice")
    certs.issue_client(ca_dir, "bob")
    return ca_dir


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most permissive umask, so only the modes we pass to os.open protect keys."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- TLS: the certificates do their job ------------------------------------------


def test_server_and_client_certificates_complete_a_mutual_tls13_handshake(pki: Path) -> None:
    pair = handshake(client_context(pki), server_context(pki))

    assert pair.client.version() == pair.server.version() == "TLSv1.3"
    peer = pair.server.getpeercert()
    assert peer is not None
    assert ("URI", "fluidity://client/alice") in peer["subjectAltName"]
    assert pair.client_sends(b"ping") == b"ping"


def test_the_default_server_certificate_is_valid_for_localhost_and_127_0_0_1(pki: Path) -> None:
    for hostname in ("localhost", "127.0.0.1"):
        handshake(client_context(pki), server_context(pki), server_hostname=hostname)


def test_server_certificate_carries_exactly_the_names_and_addresses_given(ca_dir: Path) -> None:
    certs.issue_server(ca_dir, "edge", dns=["tunnel.example.org"], ips=["203.0.113.9", "::1"])
    certs.issue_client(ca_dir, "alice")
    server_ctx = server_context(ca_dir, "edge")

    for hostname in ("tunnel.example.org", "203.0.113.9", "::1"):
        handshake(client_context(ca_dir), server_ctx, server_hostname=hostname)
    with pytest.raises(HandshakeFailed) as failed:
        handshake(client_context(ca_dir), server_ctx, server_hostname="localhost")
    assert failed.value.side == "client"
    assert "Hostname mismatch" in str(failed.value.error)


def test_a_server_certificate_is_refused_as_a_client_certificate(pki: Path) -> None:
    with pytest.raises(HandshakeFailed) as failed:
        handshake(client_context(pki, "server"), server_context(pki))

    assert failed.value.side == "server"
    assert "unsuitable certificate purpose" in str(failed.value.error)


def test_a_client_certificate_is_refused_as_a_server_certificate(pki: Path) -> None:
    with pytest.raises(HandshakeFailed) as failed:
        handshake(client_context(pki, "bob"), server_context(pki, "alice"), "alice")

    assert failed.value.side == "client"
    assert "unsuitable certificate purpose" in str(failed.value.error)


def test_a_client_certificate_from_another_ca_is_refused(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.init_ca(other)
    certs.issue_client(other, "mallory")
    mallory = client_context(other, "mallory")
    mallory.load_verify_locations(cafile=pki / "ca.crt")  # so only the server side can fail

    with pytest.raises(HandshakeFailed) as failed:
        handshake(mallory, server_context(pki))
    assert failed.value.side == "server"


def test_a_revoked_client_is_refused_and_the_others_still_get_in(pki: Path) -> None:
    crl = revocation.revoke(pki, "alice")
    server_ctx = server_context(pki, crl=crl)

    with pytest.raises(HandshakeFailed) as failed:
        handshake(client_context(pki, "alice"), server_ctx)
    assert failed.value.side == "server"
    assert "certificate revoked" in str(failed.value.error)
    handshake(client_context(pki, "bob"), server_ctx)


def test_an_empty_crl_from_refresh_lets_every_client_in(pki: Path) -> None:
    crl = revocation.refresh_crl(pki)

    assert list(x509.load_pem_x509_crl(crl.read_bytes())) == []
    handshake(client_context(pki, "alice"), server_context(pki, crl=crl))


def test_crl_checking_without_a_crl_for_the_ca_refuses_everyone(pki: Path) -> None:
    # Why the docs tell servers to load a CRL file whenever they enable CRL checks.
    server_ctx = server_context(pki)
    server_ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    with pytest.raises(HandshakeFailed, match="unable to get certificate CRL"):
        handshake(client_context(pki, "alice"), server_ctx)


# --- what is inside the certificates ---------------------------------------------


def test_the_ca_certificate_can_sign_certificates_and_crls_only(ca_dir: Path) -> None:
    ca = load_cert(ca_dir / "ca.crt")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value

    assert constraints.critical and constraints.value.ca
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.subject.rfc4514_string() == "CN=Fluidity CA"
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"


def test_leaf_certificates_name_their_issuer_key_and_have_random_128_bit_serials(
    pki: Path,
) -> None:
    ca_ski = load_cert(pki / "ca.crt").extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    leaves = [load_cert(pki / f"{name}.crt") for name in ("server", "alice", "bob")]

    for leaf in leaves:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.value.digest
        assert leaf.serial_number.bit_length() == 128
    assert len({leaf.serial_number for leaf in leaves}) == len(leaves)


def test_a_server_certificate_is_for_server_auth_with_localhost_by_default(pki: Path) -> None:
    cert = load_cert(pki / "server.crt")
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.subject.rfc4514_string() == "CN=server"
    assert sans(cert) == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]


def test_server_days_set_the_validity(ca_dir: Path) -> None:
    cert = load_cert(certs.issue_server(ca_dir, "short", days=7).cert)

    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6, hours=23) < lifetime <= dt.timedelta(days=7)


@pytest.mark.parametrize(
    ("name", "expected_sans"),
    [
        (
            "alice",
            [x509.UniformResourceIdentifier("fluidity://client/alice"), x509.DNSName("alice")],
        ),
        (
            "laptop.alice",
            [
                x509.UniformResourceIdentifier("fluidity://client/laptop.alice"),
                x509.DNSName("laptop.alice"),
            ],
        ),
        ("alice_laptop", [x509.UniformResourceIdentifier("fluidity://client/alice_laptop")]),
    ],
)
def test_a_client_certificate_names_the_client_by_uri_and_by_dns_when_it_can(
    ca_dir: Path, name: str, expected_sans: list[x509.GeneralName]
) -> None:
    cert = load_cert(certs.issue_client(ca_dir, name).cert)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.rfc4514_string() == f"CN={name}"
    assert sans(cert) == expected_sans


# --- files and modes ---------------------------------------------------------------


@posix_only
def test_keys_are_owner_only_even_with_a_permissive_umask(tmp_path: Path, umask_zero: None) -> None:
    directory = tmp_path / "new" / "pki"
    certs.init_ca(directory)
    certs.issue_server(directory, "server")
    certs.issue_client(directory, "alice")

    def mode(name: str) -> int:
        return stat.S_IMODE((directory / name).stat().st_mode)

    assert {mode(n) for n in ("ca.key", "server.key", "alice.key")} == {0o600}
    assert {mode(n) for n in ("ca.crt", "server.crt", "alice.crt")} == {0o644}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [
        "alice.crt", "alice.key", "ca.crt", "ca.key", "server.crt", "server.key",
    ]  # fmt: skip


@posix_only
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_a_new_ca_directory_is_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        certs.init_ca(tmp_path / "pki")
    finally:
        os.umask(old)

    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    keyfiles.check_private_key_file(tmp_path / "pki" / "ca.key")


@posix_only
def test_force_replaces_a_world_readable_key_with_an_owner_only_one(pki: Path) -> None:
    key = pki / "alice.key"
    key.chmod(0o644)
    old = key.read_bytes()

    certs.issue_client(pki, "alice", force=True)

    assert key.read_bytes() != old
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    keyfiles.check_private_key_file(key)


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_an_owner_only_key_passes_the_check(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(b"key")
    key.chmod(mode)

    keyfiles.check_private_key_file(key)


@posix_only
@pytest.mark.parametrize(
    ("mode", "word"), [(0o640, "readable"), (0o604, "readable"), (0o620, "writable")]
)
def test_a_key_others_can_use_fails_the_check_with_the_fix(
    tmp_path: Path, mode: int, word: str
) -> None:
    key = tmp_path / "k.key"
    key.write_bytes(b"key")
    key.chmod(mode)

    with pytest.raises(CertificateError) as raised:
        keyfiles.check_private_key_file(key)
    assert f"is {word} by others; run: chmod 600 {key}" in str(raised.value)


def test_a_missing_key_fails_the_check(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="cannot read private key"):
        keyfiles.check_private_key_file(tmp_path / "absent.key")


# --- refusals ----------------------------------------------------------------------


def test_issuing_without_a_ca_says_to_run_init(tmp_path: Path) -> None:
    expected = f"no CA in {tmp_path}: run `fluidity certs init --dir {tmp_path}` first"
    attempts: list[Callable[[], object]] = [
        lambda: certs.issue_server(tmp_path, "server"),
        lambda: certs.issue_client(tmp_path, "alice"),
        lambda: revocation.revoke(tmp_path, "alice"),
        lambda: revocation.refresh_crl(tmp_path),
    ]
    for attempt in attempts:
        with pytest.raises(CertificateError) as raised:
            attempt()
        assert str(raised.value) == expected
    assert list(tmp_path.iterdir()) == []


def test_an_existing_ca_is_not_replaced_without_force(ca_dir: Path) -> None:
    before = snapshot(ca_dir)

    with pytest.raises(CertificateError, match=r"ca\.crt already exists.*--force"):
        certs.init_ca(ca_dir)
    assert snapshot(ca_dir) == before


def test_replacing_the_ca_with_force_drops_the_old_crl(pki: Path) -> None:
    revocation.revoke(pki, "alice")
    old_ca = (pki / "ca.crt").read_bytes()

    certs.init_ca(pki, force=True)

    assert (pki / "ca.crt").read_bytes() != old_ca
    assert not (pki / "crl.pem").exists()


def test_an_existing_certificate_is_not_replaced_without_force(pki: Path) -> None:
    before = snapshot(pki)

    with pytest.raises(CertificateError) as raised:
        certs.issue_client(pki, "alice")
    assert f"{pki / 'alice.crt'} already exists" in str(raised.value)
    assert "--force" in str(raised.value)
    with pytest.raises(CertificateError, match=r"server\.crt already exists"):
        certs.issue_server(pki, "server", dns=["example.org"])
    assert snapshot(pki) == before


@pytest.mark.parametrize("bad", ["10.0.0.256", "localhost", "1.2.3", "::g", ""])
def test_a_bad_ip_is_named_in_the_error(ca_dir: Path, bad: str) -> None:
    with pytest.raises(CertificateError) as raised:
        certs.issue_server(ca_dir, "edge", ips=[bad])
    assert f"bad IP address {bad!r}" in str(raised.value)
    assert not (ca_dir / "edge.crt").exists()


@pytest.mark.parametrize("bad", ["exa mple.org", "-lead.example", "a..b", "ünï.example", ""])
def test_a_bad_dns_name_is_named_in_the_error(ca_dir: Path, bad: str) -> None:
    with pytest.raises(CertificateError) as raised:
        certs.issue_server(ca_dir, "edge", dns=[bad])
    assert f"bad DNS name {bad!r}" in str(raised.value)


def test_an_ip_given_as_a_dns_name_points_to_ip(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match=r"'10\.1\.2\.3' is an IP address.*--ip"):
        certs.issue_server(ca_dir, "edge", dns=["10.1.2.3"])


def test_a_wildcard_dns_name_is_accepted(ca_dir: Path) -> None:
    cert = load_cert(certs.issue_server(ca_dir, "edge", dns=["*.example.org"]).cert)

    assert sans(cert) == [x509.DNSName("*.example.org")]


@pytest.mark.parametrize(
    "bad", ["", "../evil", "a/b", "a\\b", "-x", ".hidden", "a..b", "a b", "x" * 65, "ca", "CRL"]
)
def test_a_bad_name_is_refused_before_any_file_is_written(ca_dir: Path, bad: str) -> None:
    before = snapshot(ca_dir)

    for issue in (certs.issue_server, certs.issue_client):
        with pytest.raises(CertificateError, match=re.escape(repr(bad))):
            issue(ca_dir, bad)
    assert snapshot(ca_dir) == before


def test_less_than_one_day_of_validity_is_refused(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match="at least 1 day, not 0"):
        certs.issue_client(ca_dir, "alice", days=0)


def test_a_garbled_ca_key_is_reported_as_unreadable(ca_dir: Path) -> None:
    (ca_dir / "ca.key").write_bytes(b"not a key")
    (ca_dir / "ca.key").chmod(0o600)

    with pytest.raises(CertificateError, match=r"cannot read the CA key .*ca\.key"):
        certs.issue_client(ca_dir, "alice")


def test_a_ca_key_that_does_not_match_the_ca_certificate_is_refused(
    ca_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    certs.init_ca(other)
    (ca_dir / "ca.key").write_bytes((other / "ca.key").read_bytes())

    with pytest.raises(CertificateError, match="does not match"):
        certs.issue_client(ca_dir, "alice")


def test_a_ca_key_that_is_not_ecdsa_is_refused(ca_dir: Path) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (ca_dir / "ca.key").write_bytes(pem)

    with pytest.raises(CertificateError, match="is not an ECDSA key"):
        certs.issue_server(ca_dir, "server")


@posix_only
def test_a_world_readable_ca_key_is_refused(ca_dir: Path) -> None:
    (ca_dir / "ca.key").chmod(0o644)

    with pytest.raises(CertificateError, match="chmod 600"):
        certs.issue_client(ca_dir, "alice")


# --- revocation ----------------------------------------------------------------------


def test_revoking_keeps_earlier_entries_and_is_idempotent(pki: Path) -> None:
    ca = load_cert(pki / "ca.crt")
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    serial = {name: load_cert(pki / f"{name}.crt").serial_number for name in ("alice", "bob")}

    revocation.revoke(pki, "alice")
    revocation.revoke(pki, "bob")
    crl = x509.load_pem_x509_crl(revocation.revoke(pki, "alice").read_bytes())

    assert sorted(entry.serial_number for entry in crl) == sorted(serial.values())
    assert crl.is_signature_valid(ca_key)
    assert crl.issuer == ca.subject
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 3


def test_the_crl_is_valid_for_thirty_days(pki: Path) -> None:
    crl = x509.load_pem_x509_crl(revocation.revoke(pki, "alice").read_bytes())

    assert crl.next_update_utc is not None
    remaining = crl.next_update_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29, hours=23) < remaining <= dt.timedelta(days=30)


def test_revoking_an_unknown_name_points_to_list(ca_dir: Path) -> None:
    with pytest.raises(CertificateError, match=r"no certificate .*nobody\.crt to revoke.*list"):
        revocation.revoke(ca_dir, "nobody")


def test_revoking_a_certificate_of_another_ca_is_refused(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.init_ca(other)
    certs.issue_client(other, "mallory")
    for suffix in (".crt", ".key"):
        (pki / f"mallory{suffix}").write_bytes((other / f"mallory{suffix}").read_bytes())

    with pytest.raises(CertificateError, match="was not issued by the CA"):
        revocation.revoke(pki, "mallory")


def test_a_crl_signed_by_another_ca_is_not_extended(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    certs.init_ca(other)
    (pki / "crl.pem").write_bytes(revocation.refresh_crl(other).read_bytes())

    with pytest.raises(CertificateError, match="was not signed by the CA"):
        revocation.revoke(pki, "alice")


# --- listing -------------------------------------------------------------------------


def test_list_describes_every_certificate_with_its_kind_serial_expiry_and_revocation(
    pki: Path,
) -> None:
    revocation.revoke(pki, "bob")

    infos = {info.path.name: info for info in inventory.list_certificates(pki)}

    assert sorted(infos) == ["alice.crt", "bob.crt", "ca.crt", "server.crt"]
    assert {name: info.kind for name, info in infos.items()} == {
        "alice.crt": "client", "bob.crt": "client", "ca.crt": "ca", "server.crt": "server",
    }  # fmt: skip
    assert {name for name, info in infos.items() if info.revoked} == {"bob.crt"}
    for name, info in infos.items():
        cert = load_cert(pki / name)
        assert info.subject == cert.subject.rfc4514_string()
        assert int(info.serial, 16) == cert.serial_number
        assert info.not_after == cert.not_valid_after_utc
        assert not info.expired()
        assert info.expired(info.not_after + dt.timedelta(seconds=1))


def test_list_marks_an_expired_certificate(pki: Path) -> None:
    write_expired_cert(pki, "alice")

    (alice,) = [info for info in inventory.list_certificates(pki) if info.path.stem == "alice"]
    assert alice.expired()


def test_list_names_a_file_that_is_not_a_certificate(pki: Path) -> None:
    (pki / "junk.crt").write_text("hello")

    with pytest.raises(CertificateError, match=r"junk\.crt is not a PEM certificate"):
        inventory.list_certificates(pki)


def test_list_of_a_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="is not a directory"):
        inventory.list_certificates(tmp_path / "absent")


# --- quickstart ------------------------------------------------------------------------


def test_quickstart_makes_a_working_pki_for_the_loopback_addresses(tmp_path: Path) -> None:
    pki = certs.ensure_quickstart_pki(tmp_path / "qs")

    server = load_cert(pki.server_cert)
    assert set(sans(server)) == {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    }
    assert pki.client_cert.name == "quickstart.crt"
    for path in (pki.ca_cert, pki.server_key, pki.client_key):
        assert path.exists()
    handshake(client_context(tmp_path / "qs", "quickstart"), server_context(tmp_path / "qs"), "::1")


def test_quickstart_a_second_time_rewrites_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "qs"
    first = certs.ensure_quickstart_pki(directory)
    before = snapshot(directory)

    assert certs.ensure_quickstart_pki(directory) == first
    assert snapshot(directory) == before


def test_quickstart_reissues_only_a_missing_client_key(tmp_path: Path) -> None:
    directory = tmp_path / "qs"
    pki = certs.ensure_quickstart_pki(directory)
    before = snapshot(directory)
    pki.client_key.unlink()

    certs.ensure_quickstart_pki(directory)

    after = snapshot(directory)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"quickstart.crt", "quickstart.key"}
    handshake(client_context(directory, "quickstart"), server_context(directory))


def test_quickstart_reissues_an_expired_client_certificate(tmp_path: Path) -> None:
    directory = tmp_path / "qs"
    pki = certs.ensure_quickstart_pki(directory)
    server_before = pki.server_cert.read_bytes()
    write_expired_cert(directory, "quickstart")

    certs.ensure_quickstart_pki(directory)

    assert load_cert(pki.client_cert).not_valid_after_utc > dt.datetime.now(dt.UTC)
    assert pki.server_cert.read_bytes() == server_before


def test_quickstart_with_a_new_ca_reissues_both_leaves(tmp_path: Path) -> None:
    directory = tmp_path / "qs"
    pki = certs.ensure_quickstart_pki(directory)
    pki.ca_cert.unlink()

    certs.ensure_quickstart_pki(directory)

    ca = load_cert(pki.ca_cert)
    for leaf in (pki.server_cert, pki.client_cert):
        load_cert(leaf).verify_directly_issued_by(ca)
    handshake(client_context(directory, "quickstart"), server_context(directory))
