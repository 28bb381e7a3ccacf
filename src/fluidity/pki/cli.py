"""``fluidity certs``: the command-line face of ``fluidity.pki``.

``add_parser`` registers ``certs`` and its subcommands (init, server, client,
list, revoke, crl) on the main parser's subparsers. Each subcommand leaves a
``func(args) -> int`` on the namespace; the main CLI runs ``args.func(args)``
and exits with what it returns. A CertificateError is reported here, as
``fluidity: error: ...`` on stderr with exit status 2, so ``func`` never raises
it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fluidity.errors import CertificateError

if TYPE_CHECKING:
    from fluidity.pki.cadir import IssuedFiles
    from fluidity.pki.inventory import CertInfo

DIR_ENV = "FLUIDITY_CERTS_DIR"
EXIT_OK = 0
EXIT_ERROR = 2
WARN_DAYS = 14  # as the agent's and server's tls.expiry_warning_days

Handler = Callable[[argparse.Namespace], int]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``certs`` with its subcommands on ``subparsers``."""
    parser = subparsers.add_parser(
        "certs",
        help="create and manage the private CA and its certificates",
        description="Create and manage the private CA, server and client certificates.",
    )
    commands = parser.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)

    init = _command(commands, "init", _run_init, "create the CA (ca.crt, ca.key)")
    _add_force(init, "replace an existing CA (every certificate it signed stops working)")

    server = _command(commands, "server", _run_server, "issue a server certificate")
    _add_name(server)
    server.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="a DNS name (repeatable)"
    )
    server.add_argument(
        "--ip", action="append", default=[], metavar="ADDR", help="an IP address (repeatable)"
    )
    _add_days(server)
    _add_force(server, "replace an existing NAME.crt/NAME.key")

    client = _command(commands, "client", _run_client, "issue a client certificate")
    _add_name(client)
    _add_days(client)
    _add_force(client, "replace an existing NAME.crt/NAME.key")
    client.add_argument(
        "--p12",
        action="store_true",
        help="also write NAME.p12 (key, certificate and CA) for browsers and OS stores",
    )
    client.add_argument(
        "--password-env",
        metavar="VAR",
        help="with --p12: the environment variable holding its password (default: a prompt)",
    )

    listing = _command(commands, "list", _run_list, "list certificates with expiry and revocation")
    listing.add_argument(
        "--warn-days",
        type=int,
        default=WARN_DAYS,
        metavar="N",
        help=f"mark what ends within N days EXPIRES SOON (default: {WARN_DAYS})",
    )
    revoke = _command(commands, "revoke", _run_revoke, "revoke a certificate (adds it to crl.pem)")
    _add_name(revoke)
    _command(commands, "crl", _run_crl, "re-sign crl.pem for 30 more days (empty if none)")


def format_table(
    infos: Sequence[CertInfo], now: dt.datetime, soon: dt.timedelta = dt.timedelta(0)
) -> str:
    """Render ``infos`` as an aligned table, marking REVOKED, EXPIRED and EXPIRES SOON
    (ending within ``soon`` of ``now``)."""
    header = ("NAME", "SUBJECT", "KIND", "SERIAL", "NOT AFTER (UTC)", "STATUS")
    rows = [header] + [
        (
            info.path.stem,
            info.subject,
            info.kind,
            info.serial,
            info.not_after.strftime("%Y-%m-%d %H:%M"),
            _status(info, now, soon),
        )
        for info in infos
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _status(info: CertInfo, now: dt.datetime, soon: dt.timedelta) -> str:
    checks = (
        ("REVOKED", info.revoked),
        ("EXPIRED", info.expired(now)),
        ("EXPIRES SOON", info.expires_soon(soon, now)),
    )
    marks = [mark for mark, on in checks if on]
    return " ".join(marks) if marks else "ok"


def format_crl_line(next_update: dt.datetime | None, now: dt.datetime, soon: dt.timedelta) -> str:
    """The CRL's line under the table: its next update, marked like a certificate."""
    if next_update is None:
        return "crl.pem: none (fluidity certs crl creates one)"
    when = next_update.strftime("%Y-%m-%d %H:%M")
    if now > next_update:
        mark = "EXPIRED: servers checking it refuse every client; run fluidity certs crl"
    elif next_update - now <= soon:
        mark = "EXPIRES SOON: run fluidity certs crl"
    else:
        mark = "ok"
    return f"crl.pem: next update {when} (UTC)  {mark}"


# --- handlers -----------------------------------------------------------------


def _run_init(args: argparse.Namespace) -> int:
    from fluidity.pki import certs  # imported on use: the server and agent never need it

    files = certs.init_ca(args.dir, force=args.force)
    print("created the CA:")
    print(f"  certificate: {files.cert} (give it to servers and agents)")
    print(f"  private key: {files.key} (keep it safe: it signs everything)")
    return EXIT_OK


def _run_server(args: argparse.Namespace) -> int:
    from fluidity.pki import certs

    files = certs.issue_server(
        args.dir, args.name, dns=args.dns, ips=args.ip, force=args.force, days=args.days
    )
    _print_issued("server", files)
    return EXIT_OK


def _run_client(args: argparse.Namespace) -> int:
    from fluidity.pki import certs

    if args.password_env and not args.p12:
        raise CertificateError("--password-env is the password of --p12: add --p12")
    password = _p12_password(args.password_env) if args.p12 else None
    files = certs.issue_client(args.dir, args.name, force=args.force, days=args.days)
    _print_issued("client", files)
    if password is not None:
        from fluidity.pki.bundle import write_pkcs12

        bundle = write_pkcs12(args.dir, args.name, password)
        print(f"  PKCS#12 bundle: {bundle} (mode 0600; import it into a browser or OS store)")
    return EXIT_OK


def _p12_password(variable: str | None) -> str:
    """The bundle's password: from ``variable`` if named, else typed twice at a prompt."""
    if variable:
        value = os.environ.get(variable)
        if not value:
            raise CertificateError(
                f"--password-env: environment variable {variable} is not set or empty; export it"
            )
        return value
    import getpass

    try:
        first = getpass.getpass("PKCS#12 password: ")
        again = getpass.getpass("again: ")
    except (EOFError, KeyboardInterrupt) as exc:
        raise CertificateError("no PKCS#12 password given: use --password-env VAR") from exc
    if first != again:
        raise CertificateError("the two passwords differ: run the command again")
    if not first:
        raise CertificateError("the PKCS#12 bundle needs a password (it holds the private key)")
    return first


def _run_list(args: argparse.Namespace) -> int:
    from fluidity.pki.inventory import crl_next_update, list_certificates

    infos = list_certificates(args.dir)
    now, soon = dt.datetime.now(dt.UTC), dt.timedelta(days=args.warn_days)
    if not infos:
        print(f"no certificates in {args.dir}")
        return EXIT_OK
    print(format_table(infos, now, soon))
    print(format_crl_line(crl_next_update(args.dir), now, soon))
    return EXIT_OK


def _run_revoke(args: argparse.Namespace) -> int:
    from fluidity.pki.revocation import revoke

    crl = revoke(args.dir, args.name)
    print(f"revoked {args.name}; updated {crl} (valid 30 days): reload it on the servers")
    return EXIT_OK


def _run_crl(args: argparse.Namespace) -> int:
    from fluidity.pki.revocation import refresh_crl

    crl = refresh_crl(args.dir)
    print(f"wrote {crl} (valid 30 days): reload it on the servers")
    return EXIT_OK


def _print_issued(kind: str, files: IssuedFiles) -> None:
    print(f"issued a {kind} certificate:")
    print(f"  certificate: {files.cert}")
    print(f"  private key: {files.key} (mode 0600)")


# --- wiring -------------------------------------------------------------------


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    summary: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:])
    env_dir = os.environ.get(DIR_ENV) or None
    parser.add_argument(
        "--dir",
        type=Path,
        required=env_dir is None,
        default=Path(env_dir) if env_dir else None,
        help=f"the CA directory (default: ${DIR_ENV}, if set)",
    )
    parser.set_defaults(func=_reporting_errors(handler))
    return parser


def _reporting_errors(handler: Handler) -> Handler:
    """Wrap ``handler`` so a CertificateError becomes a message on stderr and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CertificateError as exc:
            print(f"fluidity: error: {exc}", file=sys.stderr)
            return EXIT_ERROR

    return run


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--name", required=True, help="the certificate's name: files NAME.crt/NAME.key, CN=NAME"
    )


def _add_days(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days", type=int, default=825, metavar="N", help="validity in days (default: 825)"
    )


def _add_force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=what)
