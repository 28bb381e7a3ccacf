"""Typed, frozen, validated configuration of the agent (``agent.yaml``).

``load_agent_config`` reads ``agent.yaml``, then ``FLUIDITY_AGENT__*``
environment variables, then command-line overrides, and returns a frozen
``AgentConfig``; anything wrong is one ``ConfigError`` line naming the file,
the key and the fix. The agent's defaults live here, in the dataclass fields,
and nowhere else; the generic walking is in ``fluidity.config.load``. The user
reference is ``docs/configuration.md``.

Configs can also be built in code, with keyword arguments::

    AgentConfig(server=Address("127.0.0.1", 8443),
                tls=AgentTLS(ca=FileOrPem.from_path(ca), cert=..., key=...))

To add a section, write a frozen ``Section`` dataclass (fields with defaults,
rules in ``field(metadata=...)``) and add it as a field of ``AgentConfig``;
its keys, environment variables and errors come for free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fluidity.config.fields import Section, check_order
from fluidity.config.load import load_config
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.config.values import Address, FileOrPem, LogFormat, LogLevel, WebSocketEndpoint
from fluidity.errors import ConfigError
from fluidity.lifecycle.client import LifecycleConfig
from fluidity.protocol.routing import SplitRouting

TransportKind = Literal["direct", "websocket", "auto"]


@dataclass(frozen=True, kw_only=True)
class AgentTLS(Section):
    """The agent's client certificate and key, and the CA the server must chain to."""

    ca: FileOrPem
    cert: FileOrPem
    key: FileOrPem
    # Days before the client certificate ends from which the agent warns in its log
    # (the fluidity_certificate_expiry_seconds gauge is always there). 0: never.
    expiry_warning_days: float = field(default=14.0, metadata={"non_negative": True})


@dataclass(frozen=True, kw_only=True)
class AgentWebSocket(Section):
    """The agent's WebSocket transport: where to open it, what its outer TLS layer
    trusts besides the system store and ``tls.ca``, and how often to ping."""

    url: WebSocketEndpoint | None = None
    outer_ca: FileOrPem | None = None
    ping_interval: float = field(default=10.0, metadata={"non_negative": True})


@dataclass(frozen=True, kw_only=True)
class ReconnectConfig(Section):
    """Exponential backoff (with jitter) between tunnel connection attempts."""

    initial: float = field(default=0.5, metadata={"positive": True})
    max: float = field(default=30.0, metadata={"positive": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order("initial", self.initial, "max", self.max)


@dataclass(frozen=True, kw_only=True)
class AuthConfig(Section):
    """Basic credentials: a username and exactly one of ``password`` (never shown
    in ``repr`` or error messages) and ``password_env`` (a variable holding it)."""

    username: str
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.password is None) == (self.password_env is None):
            raise ConfigError("set exactly one of password and password_env")

    def resolve_password(self, env: Mapping[str, str] | None = None) -> str:
        """The password, read from ``env`` (default ``os.environ``) if ``password_env``."""
        if self.password is not None:
            return self.password
        assert self.password_env is not None  # __post_init__ guarantees one of the two
        value = (os.environ if env is None else env).get(self.password_env)
        if not value:
            raise ConfigError(
                f"auth.password_env: environment variable {self.password_env} is not set; "
                "export it or use auth.password"
            )
        return value


@dataclass(frozen=True, kw_only=True)
class AgentConfig(Section):
    """Everything ``fluidity agent`` needs; see docs/configuration.md for each key."""

    # Address is a frozen dataclass (from another module, so ruff cannot tell): one
    # shared default is safe.
    listen: Address = Address("127.0.0.1", 8080)  # noqa: RUF009
    server: Address
    server_name: str | None = None
    tls: AgentTLS
    transport: TransportKind = "direct"
    websocket: AgentWebSocket = AgentWebSocket()
    keepalive_interval: float = field(default=15.0, metadata={"positive": True})
    keepalive_timeout: float = field(default=10.0, metadata={"positive": True})
    reconnect: ReconnectConfig = ReconnectConfig()
    connect_wait: float = field(default=10.0, metadata={"non_negative": True})
    handshake_timeout: float = field(default=10.0, metadata={"positive": True})
    head_timeout: float = field(default=30.0, metadata={"positive": True})
    stream_idle_timeout: float = field(default=0.0, metadata={"non_negative": True})
    max_client_connections: int = field(default=4096, metadata={"min": 1})
    max_tunnels: int = field(default=8, metadata={"min": 1})
    extra_tunnel_idle_timeout: float = field(default=60.0, metadata={"positive": True})
    drain_timeout: float = field(default=20.0, metadata={"non_negative": True})
    auth: AuthConfig | None = None
    metrics: Address | None = None
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    lifecycle: LifecycleConfig | None = None
    upstream_proxy: UpstreamProxyConfig | None = None
    direct: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.routing  # noqa: B018 -- parses direct:, raising ConfigError naming direct[i]

    @property
    def routing(self) -> SplitRouting:
        """The ``direct:`` list parsed: which targets bypass the tunnel."""
        return SplitRouting.from_config(self.direct)

    @property
    def server_hostname(self) -> str:
        """The name to verify in the server certificate: ``server_name`` or the server host."""
        return self.server_name or self.server.host


def load_agent_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> AgentConfig:
    """The agent config from ``path`` (None: no file), ``FLUIDITY_AGENT__*`` in ``env``
    (None: ``os.environ``) and dotted-key ``overrides``, in that order of precedence."""
    return load_config(AgentConfig, role="agent", path=path, env=env, overrides=overrides)
