"""``fluidity certs`` as the main CLI runs it: parse, then ``args.func(args)``."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from fluidity.pki import certs, inventory, revocation
from fluidity.pki import cli as certs_cli


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluidity")
    certs_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run(*argv: str) -> int:
    args = make_parser().parse_args(["certs", *argv])
    status: int = args.func(args)
    return status


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "pki"
    assert run("init", "--dir", str(directory)) == 0
    capsys.readouterr()
    return directory


def test_init_creates_the_ca_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "pki"

    assert run("init", "--dir", str(directory)) == 0

    out = capsys.readouterr().out
    assert str(directory / "ca.crt") in out and str(directory / "ca.key") in out
    assert load_cert(directory / "ca.crt").subject.rfc4514_string() == "CN=Fluidity CA"


def test_server_takes_repeated_dns_and_ip_and_days(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dir", str(ca_dir), "--name", "edge", "--dns", "a.example", "--dns", "b.example"]
    argv += ["--ip", "203.0.113.4", "--ip", "2001:db8::1", "--days", "30"]

    assert run("server", *argv) == 0

    assert str(ca_dir / "edge.key") in capsys.readouterr().out
    cert = load_cert(ca_dir / "edge.crt")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "203.0.113.4",
        "2001:db8::1",
    ]
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)


def test_client_issues_a_client_certificate(ca_dir: Path) -> None:
    assert run("client", "--dir", str(ca_dir), "--name", "alice") == 0

    assert [info.kind for info in inventory.list_certificates(ca_dir)] == ["client", "ca"]


def test_list_prints_an_aligned_table_with_revoked_marks(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("server", "--dir", str(ca_dir), "--name", "server")
    run("client", "--dir", str(ca_dir), "--name", "alice")
    run("client", "--dir", str(ca_dir), "--name", "bob")
    assert run("revoke", "--dir", str(ca_dir), "--name", "bob") == 0
    capsys.readouterr()

    assert run("list", "--dir", str(ca_dir)) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "SUBJECT",
        "KIND",
        "SERIAL",
        "NOT",
        "AFTER",
        "(UTC)",
        "STATUS",
    ]
    *table, crl = lines[1:]
    rows = {line.split()[0]: line for line in table}
    assert sorted(rows) == ["alice", "bob", "ca", "server"]
    assert crl.startswith("crl.pem: next update ") and crl.endswith("ok")
    assert rows["bob"].endswith("REVOKED")
    assert rows["alice"].endswith("ok")
    serial = format(load_cert(ca_dir / "bob.crt").serial_number, "x")
    assert serial in rows["bob"]
    for column in ("KIND", "SERIAL", "STATUS"):
        start = lines[0].index(column)
        assert {line[start - 2 : start] for line in table} == {"  "}


def test_the_table_marks_expired_certificates(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "alice", days=1)
    infos = inventory.list_certificates(ca_dir)
    later = max(info.not_after for info in infos if info.kind == "client") + dt.timedelta(hours=1)

    table = certs_cli.format_table(infos, now=later)

    row = next(line for line in table.splitlines() if line.startswith("alice"))
    assert row.endswith("EXPIRED")
    revocation.revoke(ca_dir, "alice")
    table = certs_cli.format_table(inventory.list_certificates(ca_dir), now=later)
    assert "REVOKED EXPIRED" in table


def test_the_table_marks_what_expires_soon_and_the_crl_line_too(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs.issue_client(ca_dir, "brief", days=10)
    certs.issue_client(ca_dir, "lasting", days=100)
    assert run("list", "--dir", str(ca_dir)) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:-1]}
    assert rows["brief"].endswith("EXPIRES SOON") and rows["lasting"].endswith("ok")
    assert out[-1] == "crl.pem: none (fluidity certs crl creates one)"

    crl = revocation.refresh_crl(ca_dir)  # valid 30 days
    assert run("list", "--dir", str(ca_dir), "--warn-days", "31") == 0
    out = capsys.readouterr().out.splitlines()
    assert {line.split()[0]: line for line in out[1:-1]}["lasting"].endswith("ok")
    assert out[-1].endswith("EXPIRES SOON: run fluidity certs crl"), out[-1]
    next_update = x509.load_pem_x509_crl(crl.read_bytes()).next_update_utc
    assert next_update is not None
    later = next_update + dt.timedelta(minutes=1)
    line = certs_cli.format_crl_line(next_update, later, dt.timedelta(days=14))
    assert "EXPIRED: servers checking it refuse every client" in line


def test_list_of_an_empty_directory_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("list", "--dir", str(tmp_path)) == 0

    assert capsys.readouterr().out == f"no certificates in {tmp_path}\n"


def test_crl_writes_a_crl_that_revoke_then_extends(ca_dir: Path) -> None:
    assert run("crl", "--dir", str(ca_dir)) == 0
    assert list(x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())) == []

    run("client", "--dir", str(ca_dir), "--name", "alice")
    run("revoke", "--dir", str(ca_dir), "--name", "alice")
    assert len(list(x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes()))) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["client", "--name", "alice"], "no CA in {dir}: run `fluidity certs init --dir {dir}`"),
        (["server", "--name", "edge"], "no CA in {dir}"),
        (["revoke", "--name", "alice"], "no CA in {dir}"),
    ],
)
def test_without_a_ca_the_error_says_to_run_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(*argv, "--dir", str(tmp_path)) == 2

    err = capsys.readouterr().err
    assert err.startswith("fluidity: error: ")
    assert message.format(dir=tmp_path) in err


def test_an_existing_file_is_kept_without_force_and_replaced_with_it(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("client", "--dir", str(ca_dir), "--name", "alice")
    first = (ca_dir / "alice.crt").read_bytes()
    capsys.readouterr()

    assert run("client", "--dir", str(ca_dir), "--name", "alice") == 2
    err = capsys.readouterr().err
    assert f"fluidity: error: {ca_dir / 'alice.crt'} already exists" in err
    assert "--force" in err
    assert (ca_dir / "alice.crt").read_bytes() == first

    assert run("client", "--dir", str(ca_dir), "--name", "alice", "--force") == 0
    assert (ca_dir / "alice.crt").read_bytes() != first


def test_init_refuses_to_replace_the_ca_without_force(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("init", "--dir", str(ca_dir)) == 2
    assert "ca.crt already exists" in capsys.readouterr().err
    assert run("init", "--dir", str(ca_dir), "--force") == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["server", "--name", "edge", "--ip", "300.1.1.1"], "bad IP address '300.1.1.1'"),
        (["server", "--name", "edge", "--dns", "bad name"], "bad DNS name 'bad name'"),
        (["client", "--name", "../escape"], "bad certificate name '../escape'"),
        (["client", "--name", "alice", "--days", "0"], "at least 1 day, not 0"),
        (["revoke", "--name", "nobody"], "no certificate"),
    ],
)
def test_bad_input_is_reported_on_stderr_with_exit_status_2(
    ca_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(*argv, "--dir", str(ca_dir)) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("fluidity: error: ")
    assert message in captured.err


def test_dir_comes_from_the_environment_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUIDITY_CERTS_DIR", str(tmp_path / "from-env"))

    assert run("init") == 0

    assert (tmp_path / "from-env" / "ca.crt").exists()


def test_dir_is_required_without_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLUIDITY_CERTS_DIR", raising=False)

    with pytest.raises(SystemExit) as exited:
        make_parser().parse_args(["certs", "list"])
    assert exited.value.code == 2
    assert "--dir" in capsys.readouterr().err


def test_certs_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        make_parser().parse_args(["certs"])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
