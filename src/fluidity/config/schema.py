"""Typed, frozen, validated configuration of the agent and the server.

``load_agent_config`` / ``load_server_config`` read ``agent.yaml`` /
``server.yaml``, then ``FLUIDITY_AGENT__*`` / ``FLUIDITY_SERVER__*`` environment
variables, then command-line overrides, and return frozen dataclasses; anything
wrong is one ``ConfigError`` line naming the file, the key and the fix. Defaults
live here, in the dataclass fields, and nowhere else; the generic walking is in
``fluidity.config.load``. The user reference is ``docs/configuration.md``.

Configs can also be built in code, with keyword arguments::

    AgentConfig(server=Address("127.0.0.1", 8443),
                tls=AgentTLS(ca=FileOrPem.from_path(ca), cert=..., key=...))

To add a section, write a frozen dataclass (fields with defaults, rules in
``field(metadata=...)``) and add it as a field of ``AgentConfig`` or
``ServerConfig``; its keys, environment variables and errors come for free.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from fluidity.config.load import Section, load_config
from fluidity.config.rebalance import RebalanceConfig
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.errors import ConfigError
from fluidity.lifecycle.client import LifecycleConfig
from fluidity.lifecycle.cloudwatch import CloudWatchConfig
from fluidity.protocol.identity import check_patterns
from fluidity.protocol.routing import SplitRouting

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
TransportKind = Literal["direct", "websocket", "auto"]
DEFAULT_WEBSOCKET_PATH = "/fluidity"
_PORT = {"min": 1, "max": 65535}


# -- value types ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """A TCP endpoint. Text form ``host:port``, or ``[v6addr]:port`` for IPv6."""

    host: str
    port: int
    config_expected: ClassVar[str] = "host:port (IPv6 as [addr]:port)"

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(f"address host {self.host!r} is empty or has spaces")
        # Port 0 asks the system for a free port (listeners in tests and quickstart).
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be from 0 to 65535, got {self.port!r}")

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``host:port`` or ``[v6addr]:port``; raise ``ConfigError`` if malformed."""
        bad = ConfigError(f"expected {cls.config_expected}, got {text!r}")
        if text.startswith("["):
            host, bracket, port = text[1:].partition("]:")
            if not bracket or not _is_ipv6(host):
                raise bad
        else:
            host, colon, port = text.rpartition(":")
            if not colon or ":" in host:
                raise bad
        if not (port.isascii() and port.isdigit()):
            raise bad
        return cls(host, int(port))

    @classmethod
    def from_config(cls, value: object, *, key: str, base_dir: Path) -> Address:
        """The loader's hook (see ``fluidity.config.load.ConfigValue``)."""
        if not isinstance(value, str):
            hint = "; quote IPv6 addresses in YAML" if isinstance(value, list) else ""
            raise ConfigError(f"expected {cls.config_expected}, got {value!r}{hint}")
        return cls.parse(value)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


_PEM_BEGIN = "-----BEGIN"


@dataclass(frozen=True)
class FileOrPem:
    """A certificate, key or CRL: a file path, or PEM text given inline.

    Exactly one of ``path`` and ``pem`` is set. ``pem`` never shows in ``repr``
    (it may be a private key); ``source`` names the key it came from.
    """

    path: Path | None = None
    pem: bytes | None = field(default=None, repr=False)
    source: str = field(default="code", compare=False)
    config_expected: ClassVar[str] = "a file path or inline PEM text (-----BEGIN ...)"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.pem is None):
            raise ConfigError("FileOrPem needs exactly one of path and pem")

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> FileOrPem:
        """A file, read when ``read_bytes`` is called."""
        return cls(path=Path(path))

    @classmethod
    def from_pem(cls, pem: str | bytes, *, source: str = "code") -> FileOrPem:
        """Inline PEM text; ``source`` (a key path) appears in ``describe``."""
        return cls(pem=pem.encode() if isinstance(pem, str) else pem, source=source)

    @classmethod
    def from_config(cls, value: object, *, key: str, base_dir: Path) -> FileOrPem:
        """The loader's hook: inline PEM if the text starts with ``-----BEGIN``,
        else a path relative to ``base_dir`` that must name a readable file."""
        if not isinstance(value, str | os.PathLike) or not str(value).strip():
            raise ConfigError(f"expected {cls.config_expected}, got {value!r}")
        text = str(value)
        if text.lstrip().startswith(_PEM_BEGIN):
            if "-----END" not in text:
                raise ConfigError("inline PEM has no -----END line; is it cut short?")
            return cls.from_pem(text.strip() + "\n", source=key)
        path = base_dir / Path(text).expanduser()
        if not path.exists():
            raise ConfigError(f"file not found: {path}")
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"not a readable file: {path}")
        return cls(path=path, source=key)

    @property
    def describe(self) -> str:
        """For messages: the path, or ``inline PEM from <key>``."""
        return str(self.path) if self.path is not None else f"inline PEM from {self.source}"

    def read_bytes(self) -> bytes:
        """The PEM bytes; ``ConfigError`` if the file cannot be read."""
        if self.pem is not None:
            return self.pem
        assert self.path is not None  # __post_init__ guarantees one of the two
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.describe}: cannot read: {exc.strerror}") from None


@dataclass(frozen=True)
class WebSocketEndpoint:
    """Where the agent opens the WebSocket transport: ``wss://host[:port]/path``.

    ``host`` is dialled; ``name`` is what the outer TLS layer verifies and what the
    ``Host`` header says (the same unless derived from ``server`` and ``server_name``).
    ``ws://`` (no outer TLS) exists for a load balancer's plain listener in tests;
    the inner TLS authenticates and encrypts either way.
    """

    secure: bool
    host: str
    port: int
    path: str = DEFAULT_WEBSOCKET_PATH
    name: str = ""
    config_expected: ClassVar[str] = "a URL like wss://tunnel.example.com/fluidity"

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.host)

    @classmethod
    def parse(cls, text: str) -> WebSocketEndpoint:
        """Parse ``wss://host[:port]/path`` (or ``ws://``); ``ConfigError`` if malformed."""
        bad = f"expected {cls.config_expected}, got {text!r}"
        parsed = urllib.parse.urlsplit(text)
        if parsed.scheme not in ("wss", "ws") or not parsed.hostname:
            raise ConfigError(bad)
        if parsed.username or parsed.query or parsed.fragment:
            raise ConfigError(f"{bad}: no credentials, query or fragment")
        try:
            port = parsed.port
        except ValueError:
            raise ConfigError(f"{bad}: the port is not a number from 1 to 65535") from None
        secure = parsed.scheme == "wss"
        default_port = 443 if secure else 80
        return cls(secure, parsed.hostname, port or default_port, parsed.path or "/")

    @classmethod
    def from_config(cls, value: object, *, key: str, base_dir: Path) -> WebSocketEndpoint:
        """The loader's hook (see ``fluidity.config.load.ConfigValue``)."""
        if not isinstance(value, str):
            raise ConfigError(f"expected {cls.config_expected}, got {value!r}")
        return cls.parse(value)

    def __str__(self) -> str:
        scheme = "wss" if self.secure else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"


def _check_ws_path(path: str) -> str | None:
    if not path.startswith("/") or any(c.isspace() or c in "?#" for c in path):
        return f"expected a URL path like {DEFAULT_WEBSOCKET_PATH}, got {path!r}"
    return None


def _check_order(low_name: str, low: float, high_name: str, high: float) -> None:
    if high < low:
        raise ConfigError(
            f"{high_name} ({high}) is below {low_name} ({low}); raise {high_name} or lower "
            f"{low_name}"
        )


# -- server ------------------------------------------------------------------------------------


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


@dataclass(frozen=True, kw_only=True)
class TargetsConfig(Section):
    """Target policy lists; entries are parsed by the policy module."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    ports: tuple[int, ...] = field(default=(), metadata=_PORT)


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
        _check_order("backoff_initial", self.backoff_initial, "backoff_max", self.backoff_max)


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

    listen: Address = Address("0.0.0.0", 8443)
    tls: ServerTLS
    targets: TargetsConfig = TargetsConfig()
    clients: ClientsConfig = ClientsConfig()
    dial: DialConfig = DialConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    limits: LimitsConfig = LimitsConfig()
    websocket: ServerWebSocket = ServerWebSocket()
    keepalive_interval: float = field(default=15.0, metadata={"positive": True})
    keepalive_timeout: float = field(default=10.0, metadata={"positive": True})
    drain_timeout: float = field(default=20.0, metadata={"non_negative": True})
    metrics: Address | None = None
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    cloudwatch: CloudWatchConfig | None = None
    rebalance: RebalanceConfig = RebalanceConfig()  # noqa: RUF009 -- frozen, shared safely


# -- agent -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AgentTLS(Section):
    """The agent's client certificate and key, and the CA the server must chain to."""

    ca: FileOrPem
    cert: FileOrPem
    key: FileOrPem


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
        _check_order("initial", self.initial, "max", self.max)


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

    listen: Address = Address("127.0.0.1", 8080)
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


# -- loading -----------------------------------------------------------------------------------


def load_server_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ServerConfig:
    """The server config from ``path`` (None: no file), ``FLUIDITY_SERVER__*`` in ``env``
    (None: ``os.environ``) and dotted-key ``overrides``, in that order of precedence."""
    return load_config(ServerConfig, role="server", path=path, env=env, overrides=overrides)


def load_agent_config(
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> AgentConfig:
    """The agent config from ``path`` (None: no file), ``FLUIDITY_AGENT__*`` in ``env``
    (None: ``os.environ``) and dotted-key ``overrides``, in that order of precedence."""
    return load_config(AgentConfig, role="agent", path=path, env=env, overrides=overrides)
