"""Reload of the server's policy from ``server.yaml`` while tunnels stay up.

SIGHUP and a change of the config file (polled every ``tls.reload_interval``
seconds, like the TLS files) read ``server.yaml`` again, with the environment
and command-line overrides, and apply what can change under live tunnels:

* ``targets`` (allow, deny, ports): the dialer judges new streams by the new
  lists at once. Open streams keep running, unless the new config says
  ``targets.apply_to_open: true``: then each open stream whose target the
  new lists refuse is reset, and only those. (A dial under way at the reload
  was judged by the lists it started with; it is not judged again.)
* ``clients.allow``: new tunnels are admitted by the new list, and a live
  tunnel whose client the new list no longer admits is closed, as a revoked
  certificate's is (removing a name is how an operator cuts a client off).
* ``dial``, ``circuit_breaker`` (a change starts every circuit afresh),
  ``limits.max_tunnels``, and for tunnels made after the reload
  ``limits.max_streams_per_tunnel`` and ``limits.stream_idle_timeout``;
  ``drain_timeout``.

Everything else (``listen``, ``tls`` paths and settings, ``websocket``,
``metrics``, ``cloudwatch``, keepalive, ``limits.handshake_timeout``,
logging) is bound to listeners and tasks made at start: a change is logged as
needing a restart, and the running value stays. The contents of the TLS
files reload on their own (``fluidity.server.reload``).

A config that does not load or validate changes nothing: one error line names
the file, the key and the problem, and the previous config stays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fluidity.config.fields import changed_keys
from fluidity.config.server import ServerConfig
from fluidity.errors import ConfigError
from fluidity.protocol.addresses import parse_ip_literal
from fluidity.protocol.authority import parse_authority
from fluidity.protocol.identity import IdentityAllowList
from fluidity.protocol.policy import TargetPolicy
from fluidity.server.connection import Revocable, ServerConnection
from fluidity.server.dialer import DialSettings, breaker_of, policy_of
from fluidity.server.httpsproxy import HttpsProxyService
from fluidity.server.reload import file_signature
from fluidity.server.streams import StreamService

log = logging.getLogger(__name__)

# The sections and keys a reload applies; everything else needs a restart.
RELOADABLE = (
    "targets",
    "clients",
    "dial",
    "circuit_breaker",
    "limits.max_tunnels",
    "limits.max_streams_per_tunnel",
    "limits.stream_idle_timeout",
    "drain_timeout",
)


@dataclass(frozen=True)
class ConfigFile:
    """Where the server's config comes from: ``load`` reads it all again (file,
    environment, overrides); ``path`` is the file watched for changes (None: none)."""

    path: Path | None
    load: Callable[[], ServerConfig]


class ReloadTarget(Protocol):
    """What a reload changes in the server."""

    config: ServerConfig
    clients: IdentityAllowList
    streams: StreamService
    https_proxy: HttpsProxyService | None

    def live_connections(self) -> Iterable[ServerConnection]: ...


class PolicyReloader:
    """Applies a fresh ``server.yaml`` to ``server``; see the module docstring."""

    def __init__(self, server: ReloadTarget, source: ConfigFile) -> None:
        self._server = server
        self._source = source
        self._paths = [source.path] if source.path is not None else []
        self._signature = file_signature(self._paths)
        self.reloads = 0
        self.failures = 0

    def reload(self, reason: str) -> bool:
        """Read the config again and apply it; False (logged) keeps the previous one."""
        self._signature = file_signature(self._paths)
        try:
            fresh = self._source.load()
            policy, clients = self._build(fresh)
        except ConfigError as exc:
            self.failures += 1
            log.error("config reload (%s) failed, still using the previous config: %s", reason, exc)
            return False
        old = self._server.config
        effective = merge(old, fresh)
        self._warn_restart(reason, effective, fresh)
        changed = [key for key in RELOADABLE if _get(old, key) != _get(effective, key)]
        self._apply(old, effective, policy, clients)
        self.reloads += 1
        log.info(
            "config reloaded (%s): %s",
            reason,
            f"changed {', '.join(changed)}" if changed else "no policy change",
        )
        return True

    def _build(self, fresh: ServerConfig) -> tuple[TargetPolicy, IdentityAllowList]:
        """The new policy and allow-list, built before anything changes: a bad entry
        leaves the old ones whole. ConfigError names the file and the entry."""
        try:
            return policy_of(fresh), IdentityAllowList.from_config(fresh.clients.allow)
        except ConfigError as exc:
            where = self._source.path or "the config"
            raise ConfigError(f"{where}: {exc}") from exc

    def poll(self) -> bool:
        """Reload if the config file changed since the last (attempted) load."""
        return file_signature(self._paths) != self._signature and self.reload("file changed")

    async def watch(self, interval: float) -> None:
        """Poll every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.poll()

    def _apply(
        self,
        old: ServerConfig,
        new: ServerConfig,
        policy: TargetPolicy,
        clients: IdentityAllowList,
    ) -> None:
        server = self._server
        server.config = new
        dialer = server.streams.dialer
        dialer.update(policy, DialSettings.of(new))
        if new.circuit_breaker != old.circuit_breaker:
            dialer.breaker = breaker_of(new)
        if new.clients != old.clients:
            server.clients = clients
            live: list[Revocable] = [*server.live_connections()]
            if server.https_proxy is not None:
                server.https_proxy.clients = clients  # the proxy's next admissions too
                live += [c for c in server.https_proxy.connections if c.certified]
            close_unlisted(live, clients)
        if new.targets != old.targets and new.targets.apply_to_open:
            close_refused_streams(server.streams, policy)

    def _warn_restart(self, reason: str, effective: ServerConfig, fresh: ServerConfig) -> None:
        pending = sorted(changed_keys(effective, fresh))
        if pending:
            log.warning(
                "config reload (%s): %s changed but needs a restart; still using the running "
                "value%s",
                reason,
                ", ".join(pending),
                "s" if len(pending) > 1 else "",
            )


def merge(running: ServerConfig, fresh: ServerConfig) -> ServerConfig:
    """``running`` with the reloadable keys of ``fresh``: the config a reload puts in force."""
    limits = dataclasses.replace(
        running.limits,
        max_tunnels=fresh.limits.max_tunnels,
        max_streams_per_tunnel=fresh.limits.max_streams_per_tunnel,
        stream_idle_timeout=fresh.limits.stream_idle_timeout,
    )
    return dataclasses.replace(
        running,
        targets=fresh.targets,
        clients=fresh.clients,
        dial=fresh.dial,
        circuit_breaker=fresh.circuit_breaker,
        limits=limits,
        drain_timeout=fresh.drain_timeout,
    )


def close_unlisted(connections: Iterable[Revocable], clients: IdentityAllowList) -> None:
    """Close each live tunnel (or HTTPS proxy client with a certificate) whose client
    ``clients`` no longer admits."""
    for conn in list(connections):
        refusal = clients.refusal(conn.identity)
        if refusal is not None:
            log.warning("closing the tunnel of %s: %s", conn.peer_name, refusal)
            conn.close("client no longer in clients.allow")


def close_refused_streams(streams: StreamService, policy: TargetPolicy) -> int:
    """Reset each open stream whose target ``policy`` refuses (by name, port and the
    address it was dialled at); return how many."""
    closed = 0
    for splice, authority in list(streams.splices.items()):
        address = _peer_address(splice.transport)
        reason = _refusal(policy, authority, address)
        if reason is not None:
            log.warning(
                "closing the open stream to %s: %s (targets.apply_to_open)", authority, reason
            )
            splice.close()
            closed += 1
    return closed


def _refusal(policy: TargetPolicy, authority: str, address: str | None) -> str | None:
    try:
        host, port = parse_authority(authority)
    except ValueError as exc:
        return str(exc)
    verdict = policy.check_request(host, port)
    if verdict.allowed and address is not None:
        literal = parse_ip_literal(address)
        if literal is not None:
            _, verdict = policy.filter_addresses(host, port, [literal])
    return None if verdict.allowed else verdict.reason


def _peer_address(transport: Any) -> str | None:
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    return str(peer[0]).split("%")[0] if peer else None


def _get(config: object, dotted: str) -> object:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
