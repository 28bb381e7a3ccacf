"""Expiry dates read from DER without ``cryptography``, checked against certificates and
CRLs that ``fluidity.pki`` (and ``cryptography``, for dates it will not choose) wrote."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from cryptography import x509

from fluidity.errors import CertificateError
from fluidity.pki import certs, revocation
from fluidity.protocol.x509dates import certificate_not_after, crl_next_update, pem_blocks
from support.secpki import issue_client_with_validity


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dates") / "ca"
    certs.init_ca(directory, days=3650)
    certs.issue_server(directory, "server", dns=["localhost"], days=90)
    return directory


def not_after(path: Path) -> dt.datetime:
    der = pem_blocks(path.read_bytes(), "CERTIFICATE", str(path))[0]
    return certificate_not_after(der, str(path))


def test_the_dates_of_issued_certificates_match_what_cryptography_reads(ca_dir: Path) -> None:
    for name in ("ca", "server"):
        path = ca_dir / f"{name}.crt"
        expected = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
        assert not_after(path) == expected


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC), id="utctime"),
        pytest.param(dt.datetime(2055, 1, 2, 3, 4, 5, tzinfo=dt.UTC), id="generalizedtime"),
    ],
)
def test_a_known_end_is_read_exactly_in_both_time_encodings(ca_dir: Path, end: dt.datetime) -> None:
    # Up to 2049 X.509 encodes UTCTime (two-digit years); from 2050 GeneralizedTime.
    name = f"known{end.year}"
    issue_client_with_validity(ca_dir, name, end - dt.timedelta(days=400), end)
    assert not_after(ca_dir / f"{name}.crt") == end


def test_the_crl_next_update_matches_what_cryptography_reads(ca_dir: Path) -> None:
    path = revocation.refresh_crl(ca_dir)
    crl = x509.load_pem_x509_crl(path.read_bytes())
    der = pem_blocks(path.read_bytes(), "X509 CRL", str(path))[0]
    assert crl_next_update(der, "crl.pem") == crl.next_update_utc
    revocation.revoke(ca_dir, "server")  # a CRL with an entry reads the same way
    der = pem_blocks(path.read_bytes(), "X509 CRL", str(path))[0]
    assert (
        crl_next_update(der, "crl.pem") == x509.load_pem_x509_crl(path.read_bytes()).next_update_utc
    )


def test_a_bundle_yields_every_block_and_a_wrong_label_none(ca_dir: Path) -> None:
    bundle = (ca_dir / "server.crt").read_bytes() + (ca_dir / "ca.crt").read_bytes()
    assert len(pem_blocks(bundle, "CERTIFICATE", "bundle")) == 2
    with pytest.raises(CertificateError, match="bundle: no PEM X509 CRL block found"):
        pem_blocks(bundle, "X509 CRL", "bundle")


@pytest.mark.parametrize(
    ("der", "problem"),
    [
        pytest.param(b"", "ends early", id="empty"),
        pytest.param(b"\x02\x01\x00", "expected Certificate", id="not-a-sequence"),
        pytest.param(b"\x30\x05\x30\x03", "runs past the end", id="truncated"),
        pytest.param(b"\x30\x84\xff\xff\xff\xff", "runs past the end", id="huge-length"),
        pytest.param(b"\x30\x02\x30\x00", "ends early", id="empty-tbs"),
    ],
)
def test_malformed_der_is_refused_with_the_source_named(der: bytes, problem: str) -> None:
    with pytest.raises(CertificateError, match=f"cert.pem: .*{problem}"):
        certificate_not_after(der, "cert.pem")


def test_a_time_that_is_not_a_time_is_named(ca_dir: Path) -> None:
    der = bytearray(pem_blocks((ca_dir / "ca.crt").read_bytes(), "CERTIFICATE", "ca")[0])
    # The validity's two times, as DER writes them: UTCTime (tag 0x17, 13 bytes) or
    # GeneralizedTime (0x18, 15 bytes). Not a search for "Z": key and serial bytes may hold one.
    times = list(re.finditer(rb"(?:\x17\x0d\d{12}|\x18\x0f\d{14})Z", bytes(der)))
    end = times[1].end() - 1  # notAfter's final Z
    der[end - 2 : end] = b"99"  # 99 seconds
    with pytest.raises(CertificateError, match=r"notAfter '.*99Z' is not a DER time"):
        certificate_not_after(bytes(der), "ca")
