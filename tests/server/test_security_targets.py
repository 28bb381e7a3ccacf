"""The target policy proved through a running server: refused targets are never dialled.

A real agent and server on loopback; the server's policy does *not* allow
loopback. Listeners on ``127.0.0.1`` and ``[::1]`` count every connection they
accept, and the server's dialer goes through a recording opener that connects
for real only to loopback addresses and records (and refuses, without any
packet) everything else -- so a policy bug can never send traffic off this
machine, and any dial attempt at all shows up. After every spelling of a
denied address has been refused with 403, both counts must still be zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluidity.agent import Agent
from fluidity.config.server import TargetsConfig
from fluidity.errors import PolicyRefused
from fluidity.pki.certs import QuickstartPKI
from fluidity.protocol.policy import TargetPolicy
from fluidity.protocol.retry import CircuitBreaker
from fluidity.server.dialer import Dialer, DialSettings, IPAddress, ProtocolFactory, tcp_open
from fluidity.server.server import Server
from support.harness import make_agent_config, make_server_config

WAIT = 10.0


class CountingListener:
    """A TCP listener that counts accepted connections (and closes them)."""

    def __init__(self) -> None:
        self.accepts = 0
        self.server: asyncio.Server | None = None
        self._accepted = asyncio.Event()

    async def start(self, host: str) -> int:
        self.server = await asyncio.start_server(self._accept, host, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        self._accepted.set()
        writer.close()

    async def wait_for(self, count: int) -> None:
        """Return once ``count`` connections were accepted (callers bound the wait)."""
        while self.accepts < count:
            self._accepted.clear()
            await self._accepted.wait()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class RecordingOpener:
    """Records every address the dialer tries; connects for real only to loopback."""

    def __init__(self) -> None:
        self.calls: list[tuple[IPAddress, int]] = []

    async def __call__(
        self, factory: ProtocolFactory, address: IPAddress, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        self.calls.append((address, port))
        if not address.is_loopback:
            raise ConnectionRefusedError("the test opener dials only loopback")
        return await tcp_open(factory, address, port)


@dataclasses.dataclass
class Rig:
    server: Server
    agent: Agent
    opener: RecordingOpener
    v4: CountingListener
    v6: CountingListener
    v4_port: int
    v6_port: int

    async def connect(self, authority: str) -> tuple[int, str]:
        """CONNECT through the agent; the status and the body of the answer."""
        return await self._ask(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")

    async def get(self, url: str, host: str) -> tuple[int, str]:
        return await self._ask(f"GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")

    async def _ask(self, request: str) -> tuple[int, str]:
        assert self.agent.address is not None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.agent.address[1]), WAIT
        )
        try:
            writer.write(request.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            status = int(head.split(b" ", 2)[1])
            if status == 200:
                return status, ""
            body = await asyncio.wait_for(reader.read(), WAIT)
            return status, body.decode()
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def rig(pki: QuickstartPKI, targets: TargetsConfig) -> AsyncIterator[Rig]:
    v4, v6 = CountingListener(), CountingListener()
    v4_port, v6_port = await v4.start("127.0.0.1"), await v6.start("::1")
    server = Server(make_server_config(pki, targets=targets))
    opener = RecordingOpener()
    old = server.streams.dialer
    server.streams.dialer = Dialer(old.policy, old.settings, old.breaker, opener=opener)
    await server.start()
    assert server.address is not None
    agent = Agent(make_agent_config(pki, server.address[1]))
    await agent.start()
    try:
        await agent.keeper.wait_ready(within=WAIT)
        yield Rig(server, agent, opener, v4, v6, v4_port, v6_port)
    finally:
        await agent.shutdown(drain_timeout=0.5)
        await server.shutdown(drain_timeout=0.5)
        v4.close()
        v6.close()


DEFAULT = TargetsConfig()


def loopback_spellings(port: int, v6_port: int) -> list[tuple[str, str]]:
    return [
        (f"127.0.0.1:{port}", "loopback"),
        (f"2130706433:{port}", "loopback"),
        (f"0x7f000001:{port}", "loopback"),
        (f"0177.0.0.1:{port}", "loopback"),
        (f"127.1:{port}", "loopback"),
        (f"[::ffff:127.0.0.1]:{port}", "loopback"),
        (f"[64:ff9b::7f00:1]:{port}", "loopback"),
        (f"[::1]:{v6_port}", "loopback"),
        (f"localhost:{port}", "localhost"),
        (f"api.localhost:{port}", "localhost"),
    ]


METADATA_SPELLINGS = [
    ("[::ffff:169.254.169.254]:80", "cloud metadata"),
    ("[64:ff9b::a9fe:a9fe]:80", "cloud metadata"),
    ("2852039166:80", "cloud metadata"),
    ("0xA9FEA9FE:80", "cloud metadata"),
    ("0251.0376.0251.0376:80", "cloud metadata"),
    ("[fe80::]:80", "link-local"),
    ("[::1]:80", "loopback"),
]


def names_resolving_inside() -> list[str]:
    """Names from /etc/hosts (other than localhost) that resolve only to denied addresses."""
    found = []
    for name in dict.fromkeys([socket.gethostname(), "ip6-localhost", "ip6-loopback"]):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = {ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        policy = TargetPolicy()
        if name.lower() != "localhost" and not policy.filter_addresses(name, 80, [*addresses])[0]:
            found.append(name)
    return found


async def test_every_spelling_of_a_denied_address_is_refused_and_never_dialled(
    pki: QuickstartPKI,
) -> None:
    async with rig(pki, DEFAULT) as r:
        for authority, reason in [
            *loopback_spellings(r.v4_port, r.v6_port),
            *METADATA_SPELLINGS,
        ]:
            status, body = await r.connect(authority)
            assert status == 403, (authority, status, body)
            assert reason in body, (authority, body)
        status, body = await r.get(f"http://2130706433:{r.v4_port}/", f"2130706433:{r.v4_port}")
        assert status == 403 and "loopback" in body
        assert r.server.streams.requested == len(loopback_spellings(0, 0)) + 8
    assert r.opener.calls == []
    assert (r.v4.accepts, r.v6.accepts) == (0, 0)


async def test_a_name_that_resolves_to_a_denied_address_is_refused_and_never_dialled(
    pki: QuickstartPKI,
) -> None:
    names = names_resolving_inside()
    if not names:
        pytest.skip("no name in /etc/hosts resolves to loopback here (hostname, ip6-localhost)")
    async with rig(pki, DEFAULT) as r:
        for name in names:
            status, body = await r.connect(f"{name}:{r.v4_port}")
            assert status == 403 and "refused by policy" in body, (name, body)
    assert r.opener.calls == []
    assert (r.v4.accepts, r.v6.accepts) == (0, 0)


async def test_the_counters_do_count_when_loopback_is_allowed(pki: QuickstartPKI) -> None:
    allowed = TargetsConfig(allow=("127.0.0.0/8", "::1"))
    async with rig(pki, allowed) as r:
        assert (await r.connect(f"2130706433:{r.v4_port}"))[0] == 200
        assert (await r.connect(f"[::1]:{r.v6_port}"))[0] == 200
        await asyncio.wait_for(r.v4.wait_for(1), WAIT)
        await asyncio.wait_for(r.v6.wait_for(1), WAIT)
    assert [str(a) for a, _ in r.opener.calls] == ["127.0.0.1", "::1"]


async def test_targets_ports_refuses_other_ports_before_any_dial(pki: QuickstartPKI) -> None:
    only = TargetsConfig(allow=("127.0.0.0/8",), ports=(443,))
    async with rig(pki, only) as r:
        status, body = await r.connect(f"127.0.0.1:{r.v4_port}")
    assert status == 403 and "targets.ports" in body
    assert r.opener.calls == [] and r.v4.accepts == 0


# -- the Dialer, property-tested ------------------------------------------------------------

DENIED_RANGES = [
    ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
        "ff00::/8",
    )
]


@st.composite
def denied_addresses(draw: st.DrawFn) -> IPv4Address | IPv6Address:
    network = draw(st.sampled_from(DENIED_RANGES))
    offset = draw(st.integers(0, network.num_addresses - 1))
    return network.network_address + offset


def _v4_spellings(a: IPv4Address) -> list[str]:
    n, b = int(a), a.packed
    return [
        str(a),
        str(n),
        hex(n),
        hex(n).upper().replace("0X", "0x"),
        ".".join(f"0{x:o}" for x in b),
        ".".join(hex(x) for x in b),
        f"{b[0]}.{b[1]}.{int.from_bytes(b[2:], 'big')}",
        f"{b[0]}.{int.from_bytes(b[1:], 'big')}",
        f"[::ffff:{a}]",
        f"[::ffff:{b[0] << 8 | b[1]:x}:{b[2] << 8 | b[3]:x}]",
        f"[64:ff9b::{b[0] << 8 | b[1]:x}:{b[2] << 8 | b[3]:x}]",
        f"[2002:{b[0] << 8 | b[1]:x}:{b[2] << 8 | b[3]:x}::1]",
    ]


def spellings(address: IPv4Address | IPv6Address) -> list[str]:
    if isinstance(address, IPv4Address):
        return _v4_spellings(address)
    return [f"[{address}]", f"[{address.exploded}]", f"[{address.exploded.upper()}]"]


def resolved_forms(address: IPv4Address | IPv6Address) -> list[IPAddress]:
    """How a resolver might hand the address back: as is, IPv4-mapped, or NAT64."""
    if isinstance(address, IPv6Address):
        return [address]
    return [
        address,
        IPv6Address(f"::ffff:{address}"),
        IPv6Address(int(IPv6Address("64:ff9b::")) | int(address)),
    ]


def recording_dialer(answers: list[IPAddress]) -> tuple[Dialer, list[IPAddress]]:
    seen: list[IPAddress] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return list(answers)

    async def opener(
        factory: ProtocolFactory, address: IPAddress, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        seen.append(address)
        raise ConnectionRefusedError("recorded, never dialled")

    dialer = Dialer(
        TargetPolicy(),
        DialSettings(attempts=1, backoff_initial=0, backoff_max=0),
        CircuitBreaker(1000, 30.0),
        resolver=resolve,
        opener=opener,
    )
    return dialer, seen


def _refused(dialer: Dialer, authority: str) -> bool:
    async def attempt() -> bool:
        try:
            await dialer.dial(authority, asyncio.Protocol)
        except PolicyRefused:
            return True
        except Exception:
            return False
        return False

    return asyncio.run(attempt())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(address=denied_addresses(), choice=st.integers(0, 11), port=st.integers(1, 65535))
def test_no_spelling_of_a_denied_address_reaches_the_dialler(
    address: IPv4Address | IPv6Address, choice: int, port: int
) -> None:
    forms = spellings(address)
    dialer, seen = recording_dialer([])
    assert _refused(dialer, f"{forms[choice % len(forms)]}:{port}")
    assert seen == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    denied=st.lists(denied_addresses(), min_size=1, max_size=4),
    form=st.integers(0, 2),
    public=st.booleans(),
)
def test_a_name_is_dialled_only_at_its_allowed_addresses(
    denied: list[IPv4Address | IPv6Address], form: int, public: bool
) -> None:
    answers = [resolved_forms(a)[form % len(resolved_forms(a))] for a in denied]
    if public:
        answers.insert(len(answers) // 2, IPv4Address("93.184.216.34"))
    dialer, seen = recording_dialer(answers)
    refused = _refused(dialer, "rebinding.example:443")
    if public:
        assert seen == [IPv4Address("93.184.216.34")]
    else:
        assert refused and seen == []
