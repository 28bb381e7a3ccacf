"""The server's ``https_proxy:`` section: defaults, the rules between its keys, and where
the password of ``auth`` comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluidity.config.httpsproxy import HttpsProxyAuth, HttpsProxyConfig
from fluidity.config.server import load_server_config
from fluidity.errors import ConfigError

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
SERVER = "tls: {ca: ca.pem, cert: s.pem, key: s.key}\n"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    for name in ("ca.pem", "s.pem", "s.key"):
        (tmp_path / name).write_text(PEM)
    return tmp_path


def server_file(conf: Path, extra: str = "") -> Path:
    path = conf / "server.yaml"
    path.write_text(SERVER + extra)
    return path


def test_off_by_default(conf: Path) -> None:
    config = load_server_config(server_file(conf), env={})
    assert config.https_proxy == HttpsProxyConfig()
    assert config.https_proxy.enabled is False
    assert config.https_proxy.require_certificate is True


def test_a_file_turns_it_on_with_credentials(conf: Path) -> None:
    extra = (
        "https_proxy:\n  enabled: true\n  require_certificate: false\n"
        "  auth: {username: ci, password_env: CI_PROXY_PASSWORD}\n  head_timeout: 5\n"
    )
    config = load_server_config(server_file(conf, extra), env={})
    assert config.https_proxy.enabled and not config.https_proxy.require_certificate
    assert config.https_proxy.auth == HttpsProxyAuth(
        username="ci", password_env="CI_PROXY_PASSWORD"
    )
    assert config.https_proxy.head_timeout == 5.0


def test_the_environment_turns_it_on(conf: Path) -> None:
    env = {"FLUIDITY_SERVER__HTTPS_PROXY__ENABLED": "true"}
    assert load_server_config(server_file(conf), env=env).https_proxy.enabled


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{enabled: true, require_certificate: false}", "auth is not set"),
        ("{auth: {username: ci, password_env: X}}", "would never be asked"),
        (
            "{require_certificate: false, auth: {username: ci}}",
            "exactly one of password_env",
        ),
        (
            "{require_certificate: false, auth: {username: ci, password_env: X, "
            "password_file: /p}}",
            "exactly one of password_env",
        ),
        ("{require_certificate: false, auth: {username: 'c:i', password_env: X}}", "':'"),
        ("{auth: {username: ci, password: inline}}", "password"),  # no inline secret
        ("{head_timeout: 0}", "head_timeout"),
    ],
)
def test_mistakes_name_the_key_and_the_fix(conf: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_server_config(server_file(conf, f"https_proxy: {section}\n"), env={})
    error = str(caught.value)
    assert "https_proxy" in error and message in error


def test_password_from_the_environment() -> None:
    auth = HttpsProxyAuth(username="ci", password_env="CI_PROXY_PASSWORD")
    assert auth.credentials({"CI_PROXY_PASSWORD": "pw"}) == ("ci", "pw")
    with pytest.raises(ConfigError, match="CI_PROXY_PASSWORD is not set"):
        auth.credentials({})


def test_password_from_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "password"
    auth = HttpsProxyAuth(username="ci", password_file=str(path))
    with pytest.raises(ConfigError, match="password_file: cannot read"):
        auth.credentials({})
    path.write_text("pw from a file\n")
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        auth.credentials({})
    path.chmod(0o600)
    assert auth.credentials({}) == ("ci", "pw from a file")
    path.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        auth.credentials({})
