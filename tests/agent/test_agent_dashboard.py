"""The agent's dashboard over real HTTP: the page, its JSON (the same numbers as
``/fluidity/status`` and ``/metrics``), the error log, the buttons and who may press them."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluidity.agent.keeper import TunnelState
from fluidity.config.agent import AuthConfig, ReconnectConfig
from fluidity.config.values import Address
from fluidity.observe.dashboard import ACTION_HEADER, FIXES
from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Tunnel, start_tunnel
from support.origins import RecordingOrigin
from support.transfers import wait_for

PRESS = {ACTION_HEADER: "1"}


@pytest.fixture
async def measured(pki: QuickstartPKI) -> AsyncIterator[Tunnel]:
    tunnel = await start_tunnel(pki, metrics=Address(LOOPBACK, 0))
    try:
        yield tunnel
    finally:
        await tunnel.close()


def base(tunnel: Tunnel) -> str:
    return f"http://{LOOPBACK}:{tunnel.proxy_port}"


async def dashboard(tunnel: Tunnel, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(f"{base(tunnel)}/fluidity/dashboard.json", headers=headers)


async def press(tunnel: Tunnel, action: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.post(f"{base(tunnel)}/fluidity/{action}", headers=headers)


async def test_the_page_is_served_whole_with_nothing_from_elsewhere(tunnel: Tunnel) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        page = await client.get(f"{base(tunnel)}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert b"/fluidity/dashboard.json" in page.content
    # The only URL is the SVG namespace, a name that is never fetched.
    assert set(re.findall(rb"https?://[^\"'\s)]+", page.content)) == {b"http://www.w3.org/2000/svg"}
    assert b" src=" not in page.content and b"@import" not in page.content
    assert len(page.content) < 16 * 1024


async def test_the_numbers_are_those_of_status_and_metrics(
    measured: Tunnel, origin: RecordingOrigin
) -> None:
    async with httpx.AsyncClient(proxy=measured.proxy, trust_env=False, timeout=10) as client:
        assert (await client.get(f"{origin.url}/bytes/300000")).status_code == 200
    measured.agent.console.sample()  # as the once-a-second sampler does
    view = (await dashboard(measured)).json()
    status = measured.agent.status()
    assert view["role"] == "agent"
    for key in ("state", "server", "transport", "reconnects", "bytes_in", "bytes_out"):
        assert view["status"][key] == status[key]
    metrics = measured.agent.metrics_server
    assert metrics is not None and metrics.address is not None
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        text = (await client.get(f"http://{LOOPBACK}:{metrics.address[1]}/metrics")).text
    scraped = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert scraped["fluidity_bytes_received_total"] == view["status"]["bytes_in"] > 300_000
    top = view["history"]["top_by_bytes"][0]
    assert top["target"] == f"127.0.0.1:{origin.port}" and top["bytes"] > 300_000
    assert view["history"]["top_by_connections"][0]["connections"] == 1


async def test_a_refused_request_is_logged_with_the_words_its_client_got(tunnel: Tunnel) -> None:
    async with httpx.AsyncClient(proxy=tunnel.proxy, trust_env=False, timeout=20) as client:
        answer = await client.get(f"http://{LOOPBACK}:1/")  # nothing listens on port 1
    assert answer.status_code == 502
    view = (await dashboard(tunnel)).json()
    [entry] = view["history"]["errors"]
    assert entry["message"] == answer.text.rstrip("\n")
    assert (entry["status"], entry["kind"], entry["target"]) == (502, "unreachable", "127.0.0.1:1")
    assert view["fixes"]["unreachable"] == FIXES["unreachable"]


async def test_reconnect_now_brings_a_new_tunnel(tunnel: Tunnel) -> None:
    first = tunnel.agent.keeper.connection
    answer = await press(tunnel, "reconnect", **PRESS)
    assert answer.status_code == 200
    assert answer.json()["action"]["name"] == "reconnect"
    await wait_for(lambda: tunnel.agent.keeper.reconnects == 1, within=5)
    await tunnel.ready()
    assert tunnel.agent.keeper.connection is not first
    assert (await dashboard(tunnel)).json()["action"]["state"] == "done"


async def test_reconnect_now_cuts_a_long_backoff_short(pki: QuickstartPKI) -> None:
    """With a minute to wait before the next attempt, the button connects at once."""
    slow = ReconnectConfig(initial=60.0, max=60.0)
    tunnel = await start_tunnel(pki, reconnect=slow)
    try:
        keeper = tunnel.agent.keeper
        keeper._backoff.jitter = False  # the wait is the full minute, not a random part of it
        [conn] = list(tunnel.server.tunnels.live)
        conn.close_now("test: the server drops the agent")
        await wait_for(lambda: keeper.state is TunnelState.CONNECTING, within=5)
        assert (await press(tunnel, "reconnect", **PRESS)).status_code == 200
        await keeper.wait_ready(within=5)
        assert keeper.reconnects == 1
    finally:
        await tunnel.close()


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 403, ACTION_HEADER),
        ({**PRESS, "Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
        ({**PRESS, "Origin": "http://evil.example"}, 403, "another origin"),
        ({**PRESS, "Host": "evil.example"}, 421, "open it as http://127.0.0.1"),
    ],
)
async def test_an_action_from_another_page_is_refused(
    tunnel: Tunnel, headers: dict[str, str], status: int, says: str
) -> None:
    answer = await press(tunnel, "reconnect", **headers)
    assert answer.status_code == status
    assert says in answer.json()["error"]
    assert tunnel.agent.keeper.reconnects == 0


async def test_the_page_itself_may_press_the_button(tunnel: Tunnel) -> None:
    origin = base(tunnel)
    same = {**PRESS, "Origin": origin, "Sec-Fetch-Site": "same-origin"}
    assert (await press(tunnel, "reconnect", **same)).status_code == 200


async def test_a_rebinding_host_gets_no_data(tunnel: Tunnel) -> None:
    answer = await dashboard(tunnel, Host="evil.example:8080")
    assert answer.status_code == 421
    assert "status" not in answer.json()


async def test_an_action_is_a_post(tunnel: Tunnel) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        answer = await client.get(f"{base(tunnel)}/fluidity/reconnect", headers=PRESS)
    assert answer.status_code == 405


async def test_wake_and_kill_need_a_lifecycle_section(tunnel: Tunnel) -> None:
    assert (await dashboard(tunnel)).json()["actions"] == {
        "reconnect": True,
        "wake": False,
        "kill": False,
    }
    for action in ("wake", "kill"):
        answer = await press(tunnel, action, **PRESS)
        assert answer.status_code == 409
        assert "lifecycle:" in answer.json()["error"]


async def test_with_credentials_the_dashboard_asks_for_them(pki: QuickstartPKI) -> None:
    auth = AuthConfig(username="ann", password="s3cret")
    tunnel = await start_tunnel(pki, auth=auth)
    try:
        denied = await dashboard(tunnel)
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == 'Basic realm="fluidity"'
        token = base64.b64encode(b"ann:s3cret").decode()
        assert (await dashboard(tunnel, Authorization=f"Basic {token}")).status_code == 200
        proxy = await dashboard(tunnel, **{"Proxy-Authorization": f"Basic {token}"})
        assert proxy.status_code == 200
        wrong = base64.b64encode(b"ann:guess").decode()
        assert (await dashboard(tunnel, Authorization=f"Basic {wrong}")).status_code == 401
        assert (await press(tunnel, "reconnect", **PRESS)).status_code == 401
    finally:
        await tunnel.close()


async def test_the_sampler_stops_with_the_agent(pki: QuickstartPKI) -> None:
    tunnel = await start_tunnel(pki)
    sampler = tunnel.agent.console._sampler
    assert sampler is not None and not sampler.done()
    await tunnel.close()
    await asyncio.sleep(0)
    assert sampler.done()
