"""``fluidity certs client --p12``: a PKCS#12 bundle that real tools open with its password."""

from __future__ import annotations

import argparse
import getpass
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from fluidity.errors import CertificateError
from fluidity.pki import certs
from fluidity.pki import cli as certs_cli
from fluidity.pki.bundle import write_pkcs12

PASSWORD = "p12-test-password"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fluidity")
    certs_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["certs", *argv])
    status: int = args.func(args)
    return status


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    certs.init_ca(directory)
    return directory


def test_password_from_the_environment(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("P12_PASSWORD", PASSWORD)
    assert (
        run(
            "client",
            "--dir",
            str(ca_dir),
            "--name",
            "ci",
            "--p12",
            "--password-env",
            "P12_PASSWORD",
        )
        == 0
    )
    bundle = ca_dir / "ci.p12"
    assert str(bundle) in capsys.readouterr().out
    assert bundle.stat().st_mode & 0o777 == 0o600
    key, cert, extra = pkcs12.load_key_and_certificates(bundle.read_bytes(), PASSWORD.encode())
    assert cert is not None and key is not None
    assert cert == x509.load_pem_x509_certificate((ca_dir / "ci.crt").read_bytes())
    assert extra == [x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())]
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(bundle.read_bytes(), b"wrong")


def test_openssl_reads_the_bundle(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "laptop")
    bundle = write_pkcs12(ca_dir, "laptop", PASSWORD)
    shown = subprocess.run(
        ["openssl", "pkcs12", "-in", str(bundle), "-nokeys", "-passin", f"pass:{PASSWORD}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "subject=CN = laptop" in shown.stdout


def test_password_from_a_prompt_typed_twice(ca_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    typed = iter([PASSWORD, PASSWORD])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(typed))
    assert run("client", "--dir", str(ca_dir), "--name", "phone", "--p12") == 0
    _key, cert, _ = pkcs12.load_key_and_certificates(
        (ca_dir / "phone.p12").read_bytes(), PASSWORD.encode()
    )
    assert cert is not None


def test_refusals_name_the_fix(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("UNSET_P12_PASSWORD", raising=False)
    argv = ["client", "--dir", str(ca_dir), "--name", "x", "--p12"]
    assert run(*argv, "--password-env", "UNSET_P12_PASSWORD") == 2
    assert "UNSET_P12_PASSWORD is not set" in capsys.readouterr().err
    assert not (ca_dir / "x.crt").exists()  # nothing issued before the password was had
    typed = iter(["one", "two"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(typed))
    assert run(*argv) == 2
    assert "differ" in capsys.readouterr().err
    assert run("client", "--dir", str(ca_dir), "--name", "y", "--password-env", "V") == 2
    assert "add --p12" in capsys.readouterr().err
    certs.issue_client(ca_dir, "z")
    with pytest.raises(CertificateError, match="needs a password"):
        write_pkcs12(ca_dir, "z", "")
