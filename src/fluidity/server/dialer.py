"""The server's way to a target: policy, one resolution, retries, circuit breaker.

Order matters for safety: the name is checked before it is resolved, it is
resolved exactly once, every resolved address is checked, and only the
addresses that passed are dialled -- by address, so no second resolution can
swap in a forbidden one (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from fluidity.config.server import ServerConfig
from fluidity.errors import (
    CircuitOpen,
    DialRefused,
    DialTimeout,
    PolicyRefused,
    ResolveError,
    TargetError,
)
from fluidity.protocol.addresses import parse_ip_literal
from fluidity.protocol.authority import parse_authority
from fluidity.protocol.policy import TargetPolicy, Verdict
from fluidity.protocol.retry import Backoff, CircuitBreaker

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
_Filtered = tuple[tuple[IPAddress, ...], Verdict]
MEMO_SIZE = 4096
ProtocolFactory = Callable[[], asyncio.Protocol]
# The two system calls the dialer makes, as seams: tests record them (and prove
# that a refused target reaches neither); production uses the event loop's.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
Opener = Callable[
    [ProtocolFactory, IPAddress, int], Awaitable[tuple[asyncio.Transport, asyncio.Protocol]]
]


@dataclass(frozen=True)
class DialSettings:
    connect_timeout: float = 10.0
    attempts: int = 3
    backoff_initial: float = 0.1
    backoff_max: float = 1.0
    resolve_timeout: float = 10.0

    @classmethod
    def of(cls, config: ServerConfig) -> DialSettings:
        """The ``dial:`` section of ``config``."""
        dial = config.dial
        return cls(dial.connect_timeout, dial.attempts, dial.backoff_initial, dial.backoff_max)


def policy_of(config: ServerConfig) -> TargetPolicy:
    """The target policy of ``config``'s ``targets:`` section."""
    targets = config.targets
    return TargetPolicy.from_config(targets.allow, targets.deny, targets.ports)


def breaker_of(config: ServerConfig) -> CircuitBreaker:
    """A circuit breaker with ``config``'s ``circuit_breaker:`` settings."""
    return CircuitBreaker(config.circuit_breaker.failures, config.circuit_breaker.reset_after)


class Dialer:
    """Connects to targets on behalf of agents; raises a ``TargetError`` with a status."""

    def __init__(
        self,
        policy: TargetPolicy,
        settings: DialSettings,
        breaker: CircuitBreaker,
        clock: Callable[[], float] = time.monotonic,
        *,
        resolver: Resolver | None = None,
        opener: Opener | None = None,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.breaker = breaker
        self._clock = clock
        # The policy is immutable and its checks are pure, so their answers are
        # kept: judging a target (name spellings, every deny/allow network) cost
        # tens of microseconds on the path of every new tunnel. Bounded: cleared
        # when full.
        self._verdicts: dict[tuple[str, int], Verdict] = {}
        self._filtered: dict[tuple[str, int, tuple[IPAddress, ...]], _Filtered] = {}
        self._resolver = resolver or system_resolve
        self._opener = opener or tcp_open

    def update(self, policy: TargetPolicy, settings: DialSettings) -> None:
        """Use ``policy`` and ``settings`` from the next dial on (a config reload); the
        remembered verdicts of the old policy are dropped."""
        self.policy = policy
        self.settings = settings
        self._verdicts.clear()
        self._filtered.clear()

    async def dial(
        self, authority: str, factory: ProtocolFactory
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """Open a TCP connection to ``authority`` (``host:port``) with ``factory``'s protocol."""
        try:
            host, port = parse_authority(authority)
        except ValueError as exc:
            raise PolicyRefused(f"bad target {authority!r}: {exc}") from exc
        verdict = self._check_request(host, port)
        if not verdict.allowed:
            raise PolicyRefused(f"{host}:{port} refused by policy: {verdict.reason}")
        key = f"{host}:{port}"
        if not self.breaker.allow(key, self._clock()):
            raise CircuitOpen(f"circuit open for {key}: it failed repeatedly; retrying later")
        addresses = await self._resolve(host, port)
        allowed, verdict = self._filter_addresses(host, port, addresses)
        if not allowed:
            raise PolicyRefused(f"{host}:{port} refused by policy: {verdict.reason}")
        try:
            result = await self._connect_with_retries(host, port, allowed, factory)
        except TargetError:
            self.breaker.record_failure(key, self._clock())
            raise
        except BaseException:
            self.breaker.release(key)  # cancelled: neither verdict; free the probe
            raise
        self.breaker.record_success(key)
        return result

    def _check_request(self, host: str, port: int) -> Verdict:
        key = (host, port)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self.policy.check_request(host, port)
            _remember(self._verdicts, key, verdict)
        return verdict

    def _filter_addresses(
        self, host: str, port: int, addresses: list[IPAddress]
    ) -> tuple[list[IPAddress], Verdict]:
        key = (host, port, tuple(addresses))
        known = self._filtered.get(key)
        if known is None:
            allowed, verdict = self.policy.filter_addresses(host, port, addresses)
            known = (tuple(allowed), verdict)
            _remember(self._filtered, key, known)
        return list(known[0]), known[1]

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        literal = parse_ip_literal(host)
        if literal is not None:
            return [literal]
        try:
            async with asyncio.timeout(self.settings.resolve_timeout):
                addresses = await self._resolver(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolveError(f"cannot resolve {host}: {exc}") from exc
        except TimeoutError as exc:
            raise ResolveError(f"resolving {host} timed out") from exc
        if not addresses:
            raise ResolveError(f"{host} has no addresses")
        return addresses

    async def _connect_with_retries(
        self, host: str, port: int, addresses: list[IPAddress], factory: ProtocolFactory
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        backoff: Backoff | None = None  # made on the first retry: it seeds an RNG
        last: TargetError | None = None
        for attempt in range(self.settings.attempts):
            if attempt:
                backoff = backoff or Backoff(
                    self.settings.backoff_initial, self.settings.backoff_max, jitter=False
                )
                await asyncio.sleep(backoff.next_delay())
            for address in addresses:
                try:
                    return await self._connect(address, port, factory)
                except TargetError as exc:
                    last = exc
                    log.debug("dial %s:%s via %s failed: %s", host, port, address, exc)
        assert last is not None
        attempts = self.settings.attempts
        tries = f"{attempts} attempt" if attempts == 1 else f"{attempts} attempts"
        raise type(last)(f"{host}:{port}: {last} (after {tries})")

    async def _connect(
        self, address: IPAddress, port: int, factory: ProtocolFactory
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                transport, protocol = await self._opener(factory, address, port)
        except TimeoutError as exc:
            raise DialTimeout(
                f"connect to {address} timed out after {self.settings.connect_timeout:g} s"
            ) from exc
        except ConnectionRefusedError as exc:
            raise DialRefused(f"connection refused by {address}") from exc
        except OSError as exc:
            raise DialRefused(f"cannot connect to {address}: {exc.strerror or exc}") from exc
        return transport, protocol


def _remember(memo: dict[Any, Any], key: object, value: object) -> None:
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host`` from the system resolver, deduplicated, in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def tcp_open(
    factory: ProtocolFactory, address: IPAddress, port: int
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """A TCP connection to exactly ``address``: no name, so nothing is resolved again."""
    loop = asyncio.get_running_loop()
    return await loop.create_connection(factory, str(address), port)
