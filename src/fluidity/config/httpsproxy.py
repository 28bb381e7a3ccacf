"""The server's ``https_proxy:`` section: the server as an HTTPS proxy, with no agent.

Off by default, and opt-in on purpose: with it on, the server's port answers
proxy requests from every client of the CA straight away (a CI runner, a
container, curl or pip with a certificate), which widens what a client
certificate grants from "may run an agent" to "may use the server as a proxy
without one"; an operator should choose that. ``require_certificate: false``
widens it further, to anyone holding the Basic credentials of ``auth``, so it
demands them: ``auth.username`` and exactly one of ``auth.password_env`` (an
environment variable) and ``auth.password_file`` (a file only its owner may
read, mode 0600). There is no inline password: the secret stays out of
server.yaml.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fluidity.config.fields import Section
from fluidity.errors import CertificateError, ConfigError
from fluidity.pki.keyfiles import check_private_key_file


@dataclass(frozen=True, kw_only=True)
class HttpsProxyAuth(Section):
    """Basic credentials for clients without a certificate: a username, and the
    password from ``password_env`` or ``password_file`` (exactly one)."""

    username: str
    password_env: str | None = None
    password_file: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.password_env is None) == (self.password_file is None):
            raise ConfigError(
                "set exactly one of password_env (an environment variable) and "
                "password_file (a file of mode 0600)"
            )
        if ":" in self.username:
            raise ConfigError("username: Basic credentials cannot carry ':' in the username")

    def credentials(self, env: Mapping[str, str] | None = None) -> tuple[str, str]:
        """``(username, password)``, the password read now from the variable or the file.

        ConfigError names the key and the fix: a variable unset or empty, a file
        missing, empty, or readable by others.
        """
        if self.password_env is not None:
            password = (os.environ if env is None else env).get(self.password_env, "")
            if not password:
                raise ConfigError(
                    f"https_proxy.auth.password_env: environment variable "
                    f"{self.password_env} is not set; export it or use password_file"
                )
            return self.username, password
        assert self.password_file is not None  # __post_init__ guarantees one of the two
        return self.username, _read_password_file(Path(self.password_file))


def _read_password_file(path: Path) -> str:
    try:
        check_private_key_file(path)  # the same rule as a key: owner only
        text = path.read_text(encoding="utf-8")
    except CertificateError as exc:
        raise ConfigError(f"https_proxy.auth.password_file: {exc}") from exc
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"https_proxy.auth.password_file: cannot read {path}: {exc}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"https_proxy.auth.password_file: {path} is empty; write the password")
    return password


@dataclass(frozen=True, kw_only=True)
class HttpsProxyConfig(Section):
    """The server as an HTTPS forward proxy on its own port (ALPN ``http/1.1`` or none).

    ``enabled``: off unless set (see the module docstring for why).
    ``require_certificate``: false also admits clients without a certificate that
    send ``auth``'s Basic credentials (a presented certificate is still verified).
    ``head_timeout``: seconds to wait for each request head, as the agent's.
    """

    enabled: bool = False
    require_certificate: bool = True
    auth: HttpsProxyAuth | None = None
    head_timeout: float = field(default=30.0, metadata={"positive": True})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.require_certificate and self.auth is None:
            raise ConfigError(
                "require_certificate is false but auth is not set: clients without a "
                "certificate need credentials; add auth: {username: ..., password_env: ...}"
            )
        if self.require_certificate and self.auth is not None:
            raise ConfigError(
                "auth is set but require_certificate is true, so it would never be asked: "
                "set require_certificate: false, or remove auth"
            )
