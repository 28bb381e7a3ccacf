"""The doctor's checks that need no network: config, key files, certificates.

Certificates are real: the CA tool's, plus ones made with the ``cryptography``
API for what the tool refuses to make (expired, expiring, not yet valid).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fluidity.config.agent import load_agent_config
from fluidity.config.server import load_server_config
from fluidity.doctor.certs import check_certificates
from fluidity.doctor.files import detect_role, key_permissions
from fluidity.doctor.report import Finding, Level, exit_code, render_json
from fluidity.doctor.run import DoctorOptions, run
from support.doctorfix import by_check, diagnose, levels, shown, write_yaml
from support.harness import agent_yaml, server_yaml
from support.secpki import SecurityPKI, issue_client_with_validity

NOW = dt.datetime.now(dt.UTC)


def agent_config_file(tmp_path: Path, spki: SecurityPKI, client: str, **extra: object) -> Path:
    return write_yaml(tmp_path / "agent.yaml", agent_yaml(spki.quickstart(client), 9, **extra))


async def test_a_good_agent_config_passes_every_local_check(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    config = load_agent_config(agent_config_file(tmp_path, spki, "alice"))
    found = [*key_permissions(config), *check_certificates(config)]
    assert {f.level for f in found} == {Level.OK}, shown(found)
    assert any("tls.cert (CN=alice) is issued by tls.ca" in f.message for f in found)
    assert any("tls.key belongs to tls.cert" in f.message for f in found)


async def test_an_expired_client_certificate_is_a_problem_naming_the_reissue(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    config = load_agent_config(agent_config_file(tmp_path, spki, "expired"))
    found = check_certificates(config)
    expired = [f for f in found if "expired on" in f.message]
    assert len(expired) == 1 and expired[0].level is Level.PROBLEM, shown(found)
    assert "tls.cert (CN=expired)" in expired[0].message
    assert "fluidity certs client --dir CA_DIR --name expired --force" in expired[0].fix
    assert exit_code(found) == 1


async def test_a_certificate_expiring_within_14_days_is_a_warning(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    issue_client_with_validity(
        spki.directory, "soon", NOW - dt.timedelta(days=300), NOW + dt.timedelta(days=5)
    )
    config = load_agent_config(agent_config_file(tmp_path, spki, "soon"))
    found = check_certificates(config)
    soon = [f for f in found if "expires in" in f.message]
    assert [f.level for f in soon] == [Level.WARNING], shown(found)
    assert "expires in 4 day(s)" in soon[0].message or "expires in 5 day(s)" in soon[0].message
    assert exit_code(found) == 0


async def test_a_certificate_not_yet_valid_points_at_the_clock(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    config = load_agent_config(agent_config_file(tmp_path, spki, "future"))
    found = check_certificates(config)
    future = [f for f in found if "is not valid before" in f.message]
    assert [f.level for f in future] == [Level.PROBLEM], shown(found)
    assert "clock" in future[0].fix


async def test_a_client_certificate_of_another_ca_does_not_chain(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    document = agent_yaml(spki.quickstart(), 9)
    document["tls"] = {
        "ca": str(spki.ca),
        "cert": str(spki.other / "mallory.crt"),
        "key": str(spki.other / "mallory.key"),
    }
    config = load_agent_config(write_yaml(tmp_path / "agent.yaml", document))
    found = check_certificates(config)
    chain = [f for f in found if "is not issued by tls.ca" in f.message]
    assert [f.level for f in chain] == [Level.PROBLEM], shown(found)
    assert "Someone else's CA" in chain[0].message


async def test_a_key_that_is_not_the_certificates_is_a_problem(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    document = agent_yaml(spki.quickstart("alice"), 9)
    document["tls"] = {**document["tls"], "key": str(spki.key("bob"))}  # type: ignore[dict-item]
    config = load_agent_config(write_yaml(tmp_path / "agent.yaml", document))
    found = check_certificates(config)
    assert any(
        f.level is Level.PROBLEM and f.message == "tls.key does not belong to tls.cert"
        for f in found
    ), shown(found)


async def test_a_key_readable_by_others_is_a_problem_with_the_chmod(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(spki.key("alice").read_bytes())
    key.chmod(0o644)
    document = agent_yaml(spki.quickstart("alice"), 9)
    document["tls"] = {**document["tls"], "key": str(key)}  # type: ignore[dict-item]
    config = load_agent_config(write_yaml(tmp_path / "agent.yaml", document))
    found = key_permissions(config)
    assert [f.level for f in found] == [Level.PROBLEM]
    assert found[0].fix == f"chmod 600 {key}"
    assert "mode 0644" in found[0].message


async def test_an_invalid_config_is_one_problem_and_nothing_else(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "agent.yaml", {"server": "127.0.0.1:1", "tls": {"ca": "nope"}})
    found = await diagnose(path)
    assert [f.check for f in found] == ["config"]
    assert found[0].level is Level.PROBLEM
    assert "tls" in found[0].message


def test_the_role_is_told_from_the_file(tmp_path: Path, spki: SecurityPKI) -> None:
    agent = agent_config_file(tmp_path, spki, "alice")
    server = write_yaml(tmp_path / "server.yaml", server_yaml(spki.quickstart()))
    assert detect_role(agent) == "agent"
    assert detect_role(server) == "server"


async def test_a_server_config_is_checked_and_a_stopped_server_is_a_warning(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    document = server_yaml(spki.quickstart(), listen="127.0.0.1:9")
    path = write_yaml(tmp_path / "server.yaml", document)
    found = await diagnose(path, role="server")
    assert levels(found, "config") == {Level.OK}
    assert levels(found, "certificates") == {Level.OK}, shown(found)
    names = [f.message for f in by_check(found, "certificates") if "names the server" in f.message]
    assert names == ["tls.cert names the server as: localhost, 127.0.0.1, ::1"]
    assert levels(found, "listen") == {Level.WARNING}
    assert load_server_config(path).listen.port == 9


def test_json_output_and_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spki: SecurityPKI
) -> None:
    path = write_yaml(tmp_path / "agent.yaml", {"server": "127.0.0.1:1"})
    assert run(path, DoctorOptions(as_json=True)) == 1

    document = json.loads(capsys.readouterr().out)
    assert document["role"] == "agent" and document["result"] == "problem"
    assert document["checks"][0]["check"] == "config"
    assert document["checks"][0]["level"] == "problem"
    assert document["checks"][0]["fix"]


def test_the_verdict_of_warnings_alone_is_warning_and_exit_0() -> None:
    found = [Finding.ok("a", "fine"), Finding.warning("b", "soon", "renew")]
    assert exit_code(found) == 0
    assert '"result": "warning"' in render_json("agent", "x.yaml", found)
    assert found[1].line() == "warning  b: soon; fix: renew"
