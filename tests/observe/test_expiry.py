"""Expiry warnings and ``fluidity_certificate_expiry_seconds``: the watch on a fixed
clock, then a real server and agent made from certificates with known dates."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from fluidity.agent import Agent
from fluidity.config.agent import AgentTLS
from fluidity.config.server import ServerTLS
from fluidity.config.values import Address, FileOrPem
from fluidity.observe.expiry import DAY, ExpiryWatch, read_expiry
from fluidity.pki import revocation
from fluidity.server.server import Server
from support.harness import LOOPBACK, make_agent_config, make_server_config
from support.secpki import SecurityPKI, issue_client_with_validity, make_security_pki

END = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> SecurityPKI:
    pki = make_security_pki(tmp_path_factory.mktemp("expiry-pki"))
    issue_client_with_validity(pki.directory, "known", END - dt.timedelta(days=365), END)
    revocation.refresh_crl(pki.directory)
    return pki


def crl_end(spki: SecurityPKI) -> dt.datetime:
    crl = x509.load_pem_x509_crl((spki.directory / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None
    return crl.next_update_utc


def at(moment: dt.datetime) -> float:
    return moment.timestamp()


# -- the watch, on a fixed clock ---------------------------------------------------------------


def test_warnings_come_within_the_threshold_and_name_the_file_and_the_fix(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    known = FileOrPem.from_path(spki.cert("known"))
    now = END - dt.timedelta(days=10)
    watch = ExpiryWatch(lambda: [("client", known)], 14 * DAY, clock=lambda: at(now))
    with caplog.at_level(logging.WARNING, logger="fluidity"):
        warnings = watch.refresh_and_check()
    assert warnings == [
        f"the client certificate {spki.cert('known')} expires in 10.0 days "
        "(2031-05-06 07:08 UTC): renew it with fluidity certs client --name NAME --force, "
        "then reload"
    ]
    assert [r.getMessage() for r in caplog.records] == warnings
    assert watch.seconds_left() == {"client": 10 * DAY}


def test_nothing_is_said_before_the_threshold_or_with_warnings_off(spki: SecurityPKI) -> None:
    known = FileOrPem.from_path(spki.cert("known"))
    early = ExpiryWatch(lambda: [("client", known)], 14 * DAY, clock=lambda: at(END) - 15 * DAY)
    assert early.refresh_and_check() == []
    assert early.seconds_left() == {"client": 15 * DAY}
    off = ExpiryWatch(lambda: [("client", known)], 0, clock=lambda: at(END) - DAY)
    assert off.refresh_and_check() == [] and off.seconds_left() == {"client": DAY}


def test_an_expired_item_is_said_to_have_expired(spki: SecurityPKI) -> None:
    expired = FileOrPem.from_path(spki.cert("expired"))
    watch = ExpiryWatch(lambda: [("client", expired)], 14 * DAY)
    (warning,) = watch.refresh_and_check()
    assert "expired on" in warning and watch.seconds_left()["client"] < -DAY / 2


def test_the_crl_and_a_ca_bundle_are_read_by_their_soonest_end(
    spki: SecurityPKI, tmp_path: Path
) -> None:
    crl = read_expiry("crl", FileOrPem.from_path(spki.directory / "crl.pem"))
    assert crl is not None and crl.not_after == crl_end(spki)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(spki.ca.read_bytes() + spki.cert("known").read_bytes())
    ca = read_expiry("ca", FileOrPem.from_path(bundle))
    leaf = read_expiry("server", FileOrPem.from_path(bundle))
    ca_end = x509.load_pem_x509_certificate(spki.ca.read_bytes()).not_valid_after_utc
    assert ca is not None and ca.not_after == min(END, ca_end)
    assert leaf is not None and leaf.not_after == ca_end, "a leaf file: its first certificate"


def test_an_unreadable_item_is_logged_and_left_out(
    spki: SecurityPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    known = FileOrPem.from_path(spki.cert("known"))
    watch = ExpiryWatch(lambda: [("server", FileOrPem.from_path(broken)), ("client", known)], DAY)
    with caplog.at_level(logging.WARNING, logger="fluidity"):
        watch.refresh()
    assert set(watch.seconds_left()) == {"client"}
    assert any(str(broken) in r.getMessage() for r in caplog.records)


# -- a real server and agent ----------------------------------------------------------------------


async def scrape(address: tuple[str, int] | None) -> str:
    assert address is not None
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"http://{LOOPBACK}:{address[1]}/metrics")
    assert response.status_code == 200
    return response.text


def gauge(text: str, kind: str) -> float:
    prefix = f'fluidity_certificate_expiry_seconds{{kind="{kind}"}} '
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line.removeprefix(prefix))


async def test_the_server_warns_about_a_crl_near_its_end_and_exposes_every_kind(
    spki: SecurityPKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    crl = tmp_path / "crl.pem"
    shutil.copy(spki.directory / "crl.pem", crl)
    tls = ServerTLS(
        ca=FileOrPem.from_path(spki.ca),
        cert=FileOrPem.from_path(spki.cert("server")),
        key=FileOrPem.from_path(spki.key("server")),
        crl=FileOrPem.from_path(crl),
        reload_interval=0,
        expiry_warning_days=31,  # the CRL is valid 30 days: inside; the rest: years away
    )
    config = make_server_config(spki.quickstart(), tls=tls, metrics=Address(LOOPBACK, 0))
    server = Server(config)
    await server.start()
    try:
        assert server.metrics_server is not None
        text = await scrape(server.metrics_server.address)
    finally:
        await server.shutdown(drain_timeout=0.5)
    now = dt.datetime.now(dt.UTC).timestamp()
    server_end = x509.load_pem_x509_certificate(spki.cert("server").read_bytes())
    ca_end = x509.load_pem_x509_certificate(spki.ca.read_bytes())
    assert abs(gauge(text, "crl") - (crl_end(spki).timestamp() - now)) < 60
    assert abs(gauge(text, "server") - (server_end.not_valid_after_utc.timestamp() - now)) < 60
    assert abs(gauge(text, "ca") - (ca_end.not_valid_after_utc.timestamp() - now)) < 60
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"the CRL {crl} expires in ")
    assert "fluidity certs crl --dir DIR" in warnings[0]


async def test_the_agent_warns_about_its_client_certificate_and_exposes_it(
    spki: SecurityPKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fluidity")
    tls = AgentTLS(
        ca=FileOrPem.from_path(spki.ca),
        cert=FileOrPem.from_path(spki.cert("known")),
        key=FileOrPem.from_path(spki.key("known")),
        expiry_warning_days=(END - dt.datetime.now(dt.UTC)).days + 2,
    )
    # Port 9 (discard): nothing is listening, the tunnel never comes up, and need not.
    config = make_agent_config(spki.quickstart(), 9, tls=tls, metrics=Address(LOOPBACK, 0))
    agent = Agent(config)
    await agent.start()
    try:
        assert agent.metrics_server is not None
        text = await scrape(agent.metrics_server.address)
    finally:
        await agent.shutdown(drain_timeout=0.5)
    now = dt.datetime.now(dt.UTC).timestamp()
    assert abs(gauge(text, "client") - (END.timestamp() - now)) < 60
    warnings = [r.getMessage() for r in caplog.records if "client certificate" in r.getMessage()]
    assert len(warnings) == 1 and str(spki.cert("known")) in warnings[0]
