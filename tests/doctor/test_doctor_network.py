"""The doctor against a real server on loopback: healthy, down, wrong CA, refused
client certificate, wrong name; and its clock verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fluidity.doctor.handshake import SKEW_PROBLEM, _date_header, judge_skew
from fluidity.doctor.report import Level
from fluidity.pki import certs
from support.doctorfix import by_check, diagnose, levels, problems, shown, write_yaml
from support.harness import agent_yaml
from support.origins import RecordingOrigin
from support.secpki import SecurityPKI


def agent_file(
    tmp_path: Path, spki: SecurityPKI, port: int, client: str = "alice", **extra: object
) -> Path:
    return write_yaml(tmp_path / "agent.yaml", agent_yaml(spki.quickstart(client), port, **extra))


async def test_a_healthy_setup_is_all_ok_and_fetches_through_the_tunnel(
    tmp_path: Path, spki: SecurityPKI, server: int, origin: RecordingOrigin
) -> None:
    found = await diagnose(agent_file(tmp_path, spki, server), target=f"{origin.url}/doctor")
    assert {f.level for f in found} == {Level.OK}, shown(found)
    checks = [f.check for f in found]
    order = ["config", "key file", "certificates", "dns", "proxy", "tls handshake"]
    assert [c for c in dict.fromkeys(checks) if c in order] == order
    assert checks[-3:] == ["server name", "clock", "tunnel"]
    assert by_check(found, "tunnel")[0].message.startswith(f"GET {origin.url}/doctor")
    assert "through the tunnel: 200 (" in by_check(found, "tunnel")[0].message
    assert any(b"GET /doctor" in head for head in origin.heads)


async def test_server_down_is_a_problem_and_stops_there(tmp_path: Path, spki: SecurityPKI) -> None:
    found = await diagnose(agent_file(tmp_path, spki, 9))
    handshake = by_check(found, "tls handshake")
    assert [f.level for f in handshake] == [Level.PROBLEM], shown(found)
    assert "cannot reach the server 127.0.0.1:9" in handshake[0].message
    assert "Connection refused" in handshake[0].message
    assert "start the server" in handshake[0].fix
    assert not by_check(found, "tunnel") and not by_check(found, "clock")
    assert problems(found) == handshake


async def test_a_wrong_ca_is_named_as_tls_ca(
    tmp_path: Path, spki: SecurityPKI, server: int
) -> None:
    # a CA made again elsewhere: same name ("Fluidity CA"), another key
    wrong = tmp_path / "wrong-ca"
    certs.init_ca(wrong)
    document = agent_yaml(spki.quickstart("alice"), server)
    document["tls"] = {**document["tls"], "ca": str(wrong / "ca.crt")}  # type: ignore[dict-item]
    found = await diagnose(write_yaml(tmp_path / "agent.yaml", document))
    chain = [f for f in by_check(found, "certificates") if f.level is Level.PROBLEM]
    assert chain and "tls.cert (CN=alice) is not issued by tls.ca" in chain[0].message
    handshake = by_check(found, "tls handshake")
    assert [f.level for f in handshake] == [Level.PROBLEM], shown(found)
    assert "tls.ca" in handshake[0].fix
    assert "inspect" not in handshake[0].message.lower()


async def test_a_ca_of_another_name_is_not_taken_for_tls_inspection(
    tmp_path: Path, spki: SecurityPKI, server: int
) -> None:
    document = agent_yaml(spki.quickstart("alice"), server)
    document["tls"] = {**document["tls"], "ca": str(spki.other / "ca.crt")}  # type: ignore[dict-item]
    found = await diagnose(write_yaml(tmp_path / "agent.yaml", document))
    handshake = by_check(found, "tls handshake")
    assert [f.level for f in handshake] == [Level.PROBLEM], shown(found)
    assert "tls.ca is not the CA of this setup" in handshake[0].message


async def test_an_expired_client_certificate_is_refused_by_the_server(
    tmp_path: Path, spki: SecurityPKI, server: int
) -> None:
    found = await diagnose(agent_file(tmp_path, spki, server, client="expired"))
    assert any("expired on" in f.message for f in problems(found)), shown(found)
    handshake = by_check(found, "tls handshake")
    assert [f.level for f in handshake] == [Level.PROBLEM], shown(found)
    assert "fluidity certs client" in handshake[0].fix


async def test_a_server_name_the_certificate_lacks(
    tmp_path: Path, spki: SecurityPKI, server: int
) -> None:
    found = await diagnose(agent_file(tmp_path, spki, server, server_name="tunnel.example"))
    assert levels(found, "tls handshake") == {Level.PROBLEM}, shown(found)
    name = by_check(found, "server name")
    assert [f.level for f in name] == [Level.PROBLEM]
    assert "names localhost, 127.0.0.1, ::1, not tunnel.example" in name[0].message
    assert "server_name" in name[0].fix


def test_the_clock_verdicts() -> None:
    assert judge_skew(0.4).level is Level.OK
    assert judge_skew(-45).level is Level.WARNING
    assert "45 s ahead of the server's" in judge_skew(-45).message
    assert judge_skew(SKEW_PROBLEM + 1).level is Level.PROBLEM
    assert "behind" in judge_skew(SKEW_PROBLEM + 1).message
    assert judge_skew(None).level is Level.WARNING


def test_the_date_header_is_read_from_a_response_head() -> None:
    head = b"HTTP/1.1 404 Not Found\r\nServer: x\r\nDate: Fri, 04 Dec 2026 15:00:00 GMT\r\n\r\n"
    date = _date_header(head)
    assert date is not None and date.isoformat() == "2026-12-04T15:00:00+00:00"
    assert _date_header(b"HTTP/1.1 200 OK\r\n\r\n") is None


def test_the_command_prints_json_and_exits_1_when_the_server_is_down(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    path = agent_file(tmp_path, spki, 9)
    done = subprocess.run(
        [sys.executable, "-m", "fluidity", "doctor", "--config", str(path), "--json",
         "--timeout", "5"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["result"] == "problem"
    failed = [c for c in document["checks"] if c["level"] == "problem"]
    assert [c["check"] for c in failed] == ["tls handshake"]
    assert done.stderr == ""  # the in-process agent's log lines stay out of the way


async def test_on_the_websocket_transport_the_tunnel_line_decides(
    tmp_path: Path, spki: SecurityPKI
) -> None:
    found = await diagnose(agent_file(tmp_path, spki, 9, transport="websocket"))
    handshake = by_check(found, "tls handshake")
    assert [f.level for f in handshake] == [Level.WARNING], shown(found)
    assert "(on the direct transport; transport: websocket)" in handshake[0].message
    tunnel = by_check(found, "tunnel")
    assert [f.level for f in tunnel] == [Level.PROBLEM], shown(found)
    assert "no tunnel to 127.0.0.1:9" in tunnel[0].message
