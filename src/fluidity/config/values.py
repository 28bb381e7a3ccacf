"""Value types of the configuration, shared by the agent and server schemas.

``Address`` (``host:port``), ``FileOrPem`` (a file path or inline PEM) and
``WebSocketEndpoint`` (``wss://host/path``) are frozen dataclasses parsed from one
string each: they follow ``fluidity.config.fields.ConfigValue``, so the loader
turns the text of any key annotated with them into a value, or into one
``ConfigError`` naming the key and the expected form. They can be built in
code too (``Address("127.0.0.1", 8443)``, ``FileOrPem.from_path(ca)``). The log
literals are here because both roles use them.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from fluidity.errors import ConfigError

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
DEFAULT_WEBSOCKET_PATH = "/fluidity"


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
        """The loader's hook (see ``fluidity.config.fields.ConfigValue``)."""
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
        """The loader's hook (see ``fluidity.config.fields.ConfigValue``)."""
        if not isinstance(value, str):
            raise ConfigError(f"expected {cls.config_expected}, got {value!r}")
        return cls.parse(value)

    def __str__(self) -> str:
        scheme = "wss" if self.secure else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"
