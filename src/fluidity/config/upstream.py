"""The agent's ``upstream_proxy:`` section: how the tunnel gets out of a corporate network."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal

from fluidity.config.fields import Section
from fluidity.errors import ConfigError
from fluidity.protocol.proxyroute import Credentials, mask_url, parse_proxy_url

_PAC_PREFIXES = ("pac+http://", "pac+https://", "pac+file://")


@dataclass(frozen=True)
class UpstreamProxyConfig(Section):
    """The agent.yaml ``upstream_proxy:`` section, validated when built.

    Validation errors name the key within the section (``url: ...``); the config
    loader prefixes the file and the section path. A ``pac+`` url needs the optional
    ``pypac`` package (``pip install 'fluidity[pac]'``); without it that is an error here.

    ``url`` is ``http://host:port`` (credentials may ride in it as
    ``http://user:pass@host:port``), ``env``, or ``pac+`` and the URL of a PAC file.
    ``password_env`` names an environment variable holding the password, read on
    every connect. With a ``username`` and no password only Negotiate (Kerberos) can
    work; with neither, the current user's Kerberos ticket is offered to a proxy
    that asks for Negotiate.
    """

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.password is not None and self.password_env is not None:
            raise ConfigError(
                "password, password_env: set one, not both "
                "(password_env keeps the secret out of the file)"
            )
        if self.mode == "http":
            parse_proxy_url(self.url, "url")
        if self.mode == "pac" and importlib.util.find_spec("pypac") is None:
            raise ConfigError(
                "url: PAC files are evaluated by pypac, which is not installed: "
                "pip install 'fluidity[pac]', or give the proxy as http://host:port"
            )
        has_password = self.password is not None or self.password_env is not None
        if has_password and self.username is None:
            raise ConfigError("username: required when a password is set")

    def __repr__(self) -> str:
        # The url may carry a password (http://user:pass@host:port): show it masked.
        return (
            f"UpstreamProxyConfig(url={mask_url(self.url)!r}, username={self.username!r}, "
            f"password_env={self.password_env!r})"
        )

    @property
    def mode(self) -> Literal["env", "pac", "http"]:
        """How the proxy is found; any url that is not ``env`` or ``pac+`` is a proxy URL."""
        if self.url == "env":
            return "env"
        if self.url.startswith(_PAC_PREFIXES):
            return "pac"
        return "http"

    def credentials(self, fallback: Credentials | None = None) -> Credentials:
        """The configured username and password, else ``fallback`` (from a proxy URL)."""
        if self.username is None:
            return fallback or Credentials()
        password = self.password
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(
                    f"upstream_proxy.password_env: the environment variable "
                    f"{self.password_env} is not set; export it or set password"
                )
        return Credentials(self.username, password)
