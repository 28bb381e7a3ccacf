"""Typed, frozen, validated configuration of the server (``server.yaml``).

``load_server_config`` reads ``server.yaml``, then ``FLUIDITY_SERVER__*``
environment variables, then command-line overrides, and returns a frozen
``ServerConfig``; anything wrong is one ``ConfigError`` line naming the file,
the key and the fix. The server's defaults live here, in the dataclass fields,
and nowhere else; the generic walking is in ``fluidity.config.load``. The user
reference is ``docs/configuration.md``.

To add a section, write a frozen ``Section`` dataclass (fields with defaults,
rules in ``field(metadata=...)``) and add it as a field of ``ServerConfig``;
its keys, environment variables and errors come for free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fluidity.config.fields import Section, check_order
from fluidity.config.httpsproxy import HttpsProxyConfig
from fluidity.config.load import load_config
from fluidity.config.rebalance import RebalanceConfig
from fluidity.config.values import (
    DEFAULT_WEBSOCKET_PATH,
    Address,
    FileOrPem,
    LogFormat,
    LogLevel,
)
from fluidity.errors import ConfigError
from fluidity.lifecycle.cloudwatch import CloudWatchConfig
from fluidity.protocol.identity import check_patterns

_PORT = {"min": 1, "max": 65535}


def _check_ws_path(path: str) -> str | None:
    if not path.startswith("/") or any(c.isspace() or c in "?#" for c in path):
        return f"expected a URL path like {DEFAULT_WEBSOCKET_PATH}, got {path!r}"
    return None


@dataclass(frozen=True, kw_only=True)
class ServerTLS(Section):
    """The server's certificate and key, the CA clients must chain to, an optional CRL."""

    ca: FileOrPem
    cert: FileOrPem
    key: FileOrPem
    crl: FileOrPem | None = None
    # Seconds between checks of the files' modification times and sizes; a change
    # reloads them for new connections (SIGHUP does it at once). 0: SIGHUP only.
    reload_interval: float = field(default=5.0, metadata={"non_negative": True})
    # Days before the certificate, the CA or the CRL ends from which the server warns
    # (in its log; the fluidity_certificate_expiry_seconds gauge is always there). 0: never.
    expiry_warning_days: float = field(default=14.0, metadata={"non_negative": True})


@dataclass(frozen=True, kw_only=True)
class TargetsConfig(Section):
    """Target policy lists; entries are parsed by the policy module."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    ports: tuple[int, ...] = field(default=(), metadata=_PORT)
    # On a reload: true ends the open streams the new lists refuse; false (the
    # default) applies them to new streams only.
    apply_to_open: bool = False


@dataclass(frozen=True, kw_only=True)
class ClientsConfig(Section):
    """Client identities allowed in: globs on the certificate's CN, SAN DNS names and
    SAN URIs (see ``fluidity.protocol.identity``); empty: any certificate of the CA."""

    allow: tuple[str, ...] = field(default=(), metadata={"check": check_patterns})


@dataclass(frozen=True, kw_only=True)
class DialConfig(Section):
    """How the server connects to targets: timeout, attempts, backoff between them."""

    connect_timeout: float = field(default=10.0, metadata={"positive": True})
    attempts: int = field(default=3, metadata={"min": 1})
    backoff_initial: float = field(default=0.1, metadata={"non_negative": True})
    backoff_max: float = field(default=1.0, metadata={"non_negative": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order("backoff_initial", self.backoff_initial, "backoff_max", self.backoff_max)


@dataclass(frozen=True, kw_only=True)
class CircuitBreakerConfig(Section):
    """Per-target breaker: opens after ``failures`` in a row, half-opens after ``reset_after``."""

    failures: int = field(default=5, metadata={"min": 1})
    reset_after: float = field(default=30.0, metadata={"positive": True})


@dataclass(frozen=True, kw_only=True)
class LimitsConfig(Section):
    """Resource bounds of the server."""

    handshake_timeout: float = field(default=10.0, metadata={"positive": True})
    max_tunnels: int = field(default=1000, metadata={"min": 1})
    max_streams_per_tunnel: int = field(default=1000, metadata={"min": 1})
    stream_idle_timeout: float = field(default=0.0, metadata={"non_negative": True})


@dataclass(frozen=True, kw_only=True)
class ServerWebSocket(Section):
    """The WebSocket transport, for agents behind TLS-inspecting proxies.

    With ``enabled`` the main listener accepts it next to the direct transport
    (told apart by ALPN). ``listen`` adds a listener for it alone: TLS with
    ``cert``/``key`` (a publicly trusted certificate), plain HTTP without them
    (behind a TLS-terminating load balancer). ``cert``/``key`` without ``listen``
    are presented on the main listener to clients asking for one of their names (SNI).
    """

    enabled: bool = True
    path: str = field(default=DEFAULT_WEBSOCKET_PATH, metadata={"check": _check_ws_path})
    listen: Address | None = None
    cert: FileOrPem | None = None
    key: FileOrPem | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.cert is None) != (self.key is None):
            raise ConfigError("set both cert and key, or neither")
        if not self.enabled and (self.listen is not None or self.cert is not None):
            raise ConfigError("enabled is false but listen or cert is set; remove one")


@dataclass(frozen=True, kw_only=True)
class ServerConfig(Section):
    """Everything ``fluidity server`` needs; see docs/configuration.md for each key."""

    # Address is a frozen dataclass (from another module, so ruff cannot tell): one
    # shared default is safe.
    listen: Address = Address("0.0.0.0", 8443)  # noqa: RUF009
    tls: ServerTLS
    targets: TargetsConfig = TargetsConfig()
    clients: ClientsConfig = ClientsConfig()
    dial: DialConfig = DialConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    limits: LimitsConfig = LimitsConfig()
    websocket: ServerWebSocket = ServerWebSocket()
    https_proxy: HttpsProxyConfig = HttpsProxyConfig()  # noqa: RUF009 (frozen, from a module)
    keepalive_interval: float = field(default=15.0, metadata={"positive": True})
    keepalive_timeout: float = field(default=10.0, metadata={"positive": True})
    drain_timeout: float = field(default=20.0, metadata={"non_negative": True})
    metrics: Address | None = None
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    cloudwatch: CloudWatchConfig | None = None
    rebalance: RebalanceConfig = RebalanceConfig()  # noqa: RUF009 -- frozen, shared safely


def load_server_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ServerConfig:
    """The server config from ``path`` (None: no file), ``FLUIDITY_SERVER__*`` in ``env``
    (None: ``os.environ``) and dotted-key ``overrides``, in that order of precedence."""
    return load_config(ServerConfig, role="server", path=path, env=env, overrides=overrides)
