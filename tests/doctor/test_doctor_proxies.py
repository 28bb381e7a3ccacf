"""The doctor with a real proxy in the path: squid (a corporate proxy asking for
Basic credentials) and mitmproxy (a TLS-inspecting one)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluidity.doctor.report import Level
from support.doctorfix import by_check, diagnose, levels, problems, shown, write_yaml
from support.harness import agent_yaml
from support.mitmfix import VENV, Mitmdump
from support.origins import RecordingOrigin
from support.secpki import SecurityPKI
from support.squidfix import Squid, requires_squid, run_squid

PASSWORD = "doctor-s3cret"


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    with run_squid(basic_users={"carol": PASSWORD}) as running:
        yield running


def mitmdump_or_skip() -> Path:
    """The mitmdump of .venv-mitmproxy (scripts/test makes it), or skip saying so."""
    named = os.environ.get("FLUIDITY_MITMDUMP") or shutil.which("mitmdump")
    executable = Path(named) if named else VENV / "bin" / "mitmdump"
    if not executable.exists():
        pytest.skip(f"mitmproxy is not installed in {VENV} (scripts/test installs it there)")
    return executable


@pytest.fixture
def mitm(spki: SecurityPKI, tmp_path: Path) -> Iterator[Mitmdump]:
    proxy = Mitmdump(mitmdump_or_skip(), tmp_path / "mitm", spki.ca).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def through(squid_or_mitm: str, password: str | None = None) -> dict[str, object]:
    section: dict[str, object] = {"url": squid_or_mitm}
    if password is not None:
        section.update(username="carol", password=password)
    return {"upstream_proxy": section}


@requires_squid
async def test_squid_with_the_right_password_is_all_ok_and_names_the_schemes(
    tmp_path: Path, spki: SecurityPKI, server: int, squid: Squid, origin: RecordingOrigin
) -> None:
    document = agent_yaml(spki.quickstart(), server, **through(squid.url, PASSWORD))
    found = await diagnose(write_yaml(tmp_path / "agent.yaml", document), target=origin.url)
    assert {f.level for f in found} == {Level.OK}, shown(found)
    proxy = [f.message for f in by_check(found, "proxy")]
    route = f"route to 127.0.0.1:{server} is PROXY 127.0.0.1:{squid.port}"
    assert proxy[0] == f"upstream_proxy {squid.url}: {route}"
    assert "answers 407 Proxy Authentication Required" in proxy[1]
    assert proxy[1].endswith("offering Basic")
    assert proxy[2] == f"the proxy opens a tunnel to 127.0.0.1:{server} for carol"
    assert levels(found, "tunnel") == {Level.OK}
    assert f"CONNECT 127.0.0.1:{server}" in squid.access_log()


@requires_squid
async def test_a_pac_file_naming_squid_is_followed(
    tmp_path: Path, spki: SecurityPKI, server: int, squid: Squid
) -> None:
    pac = tmp_path / "proxy.pac"
    answer = f"PROXY 127.0.0.1:{squid.port}; DIRECT"
    pac.write_text(f'function FindProxyForURL(url, host) {{ return "{answer}"; }}')
    section = {"url": f"pac+file://{pac}", "username": "carol", "password": PASSWORD}
    document = agent_yaml(spki.quickstart(), server, upstream_proxy=section)
    found = await diagnose(write_yaml(tmp_path / "agent.yaml", document))
    proxy = by_check(found, "proxy")
    assert {f.level for f in proxy} == {Level.OK}, shown(found)
    assert proxy[0].message.endswith(f"is PROXY 127.0.0.1:{squid.port}; DIRECT")
    assert levels(found, "tls handshake") == {Level.OK}


@requires_squid
async def test_squid_refusing_the_password_is_a_problem_and_stops_there(
    tmp_path: Path, spki: SecurityPKI, server: int, squid: Squid
) -> None:
    document = agent_yaml(spki.quickstart(), server, **through(squid.url, "wrong"))
    found = await diagnose(write_yaml(tmp_path / "agent.yaml", document))
    failed = problems(found)
    assert [f.check for f in failed] == ["proxy"], shown(found)
    assert "407" in failed[0].message and "carol" in failed[0].message
    assert "wrong" not in failed[0].message  # never the password
    assert not by_check(found, "tls handshake")


async def test_https_proxy_set_but_unused_is_a_warning(
    tmp_path: Path, spki: SecurityPKI, server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:hidden@127.0.0.1:9")
    found = await diagnose(
        write_yaml(tmp_path / "agent.yaml", agent_yaml(spki.quickstart(), server))
    )
    proxy = by_check(found, "proxy")
    assert [f.level for f in proxy] == [Level.WARNING], shown(found)
    assert "user:***@127.0.0.1:9" in proxy[0].message and "hidden" not in proxy[0].message
    assert "upstream_proxy" in proxy[0].fix


async def test_mitmproxy_on_the_direct_transport_is_named_as_tls_inspection(
    tmp_path: Path, spki: SecurityPKI, server: int, mitm: Mitmdump
) -> None:
    document = agent_yaml(spki.quickstart(), server, **through(mitm.url))
    found = await diagnose(write_yaml(tmp_path / "agent.yaml", document))
    assert levels(found, "proxy") == {Level.OK}, shown(found)
    handshake = by_check(found, "tls handshake")
    assert [f.level for f in handshake] == [Level.PROBLEM], shown(found)
    assert "TLS-inspecting proxy" in handshake[0].message
    assert "issued by O=mitmproxy,CN=mitmproxy" in handshake[0].message
    assert "transport: websocket" in handshake[0].fix
    assert problems(found) == handshake


async def test_mitmproxy_with_the_websocket_transport_is_a_warning_and_the_tunnel_works(
    tmp_path: Path, spki: SecurityPKI, server: int, mitm: Mitmdump, origin: RecordingOrigin
) -> None:
    extra = {**through(mitm.url), "transport": "websocket"}
    extra["websocket"] = {"outer_ca": str(mitm.ca_cert)}
    document = agent_yaml(spki.quickstart(), server, **extra)
    found = await diagnose(write_yaml(tmp_path / "agent.yaml", document), target=origin.url)
    assert levels(found, "tls handshake") == {Level.WARNING}, shown(found)
    assert levels(found, "tunnel") == {Level.OK}, shown(found)
    assert not problems(found), shown(found)
