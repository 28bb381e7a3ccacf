"""Real tools through the server's HTTPS proxy, with no agent: git clones over smart HTTP
with a client certificate, pip downloads from an HTTPS index with Basic credentials."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fluidity.config.httpsproxy import HttpsProxyAuth
from support.httpsproxy import (
    PASSWORD,
    USER,
    ProxyPKI,
    make_proxy_pki,
    proxy_config,
    proxy_url,
    run,
    running,
)
from support.toolorigins import GIT_ENV, git_origin, make_bare_repo, package_index


@pytest.fixture(scope="module")
def ppki(tmp_path_factory: pytest.TempPathFactory) -> ProxyPKI:
    return make_proxy_pki(tmp_path_factory.mktemp("https-proxy-tools-pki"))


async def test_git_clone_through_the_https_proxy(ppki: ProxyPKI, tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    make_bare_repo(repos, "cloned through fluidity\n")
    async with running(proxy_config(ppki)) as server:
        with git_origin(repos) as port:
            clone = await run(
                [
                    "git",
                    "-c", f"http.proxy={proxy_url(server)}",
                    "-c", f"http.proxySSLCert={ppki.cert('alice')}",
                    "-c", f"http.proxySSLKey={ppki.key('alice')}",
                    "-c", f"http.proxySSLCAInfo={ppki.ca}",
                    "clone", "-q", f"http://127.0.0.1:{port}/repo.git", str(tmp_path / "out"),
                ],
                env={**GIT_ENV, "HOME": str(tmp_path)},
            )  # fmt: skip
        opened = server.metrics.value("fluidity_streams_opened_total", {"kind": "forward"})
    assert clone.returncode == 0, clone.stderr.decode()
    assert (tmp_path / "out" / "README").read_text() == "cloned through fluidity\n"
    assert opened >= 1  # info/refs, then git-upload-pack (kept alive): through the proxy


async def test_git_without_a_certificate_is_refused(ppki: ProxyPKI, tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    make_bare_repo(repos, "secret\n")
    async with running(proxy_config(ppki)) as server:
        with git_origin(repos) as port:
            clone = await run(
                [
                    "git",
                    "-c", f"http.proxy={proxy_url(server)}",
                    "-c", f"http.proxySSLCAInfo={ppki.ca}",
                    "clone", "-q", f"http://127.0.0.1:{port}/repo.git", str(tmp_path / "out"),
                ],
                env={**GIT_ENV, "HOME": str(tmp_path)},
            )  # fmt: skip
    assert clone.returncode != 0
    assert not (tmp_path / "out" / "README").exists()


async def test_pip_download_from_an_https_index_with_basic_credentials(
    ppki: ProxyPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_PIP_PROXY_PASSWORD", PASSWORD)
    auth = HttpsProxyAuth(username=USER, password_env="TEST_PIP_PROXY_PASSWORD")
    out = tmp_path / "downloads"
    async with running(proxy_config(ppki, auth=auth)) as server:
        with package_index(ppki.cert("server"), ppki.key("server"), "demo-pkg", "1.0") as port:
            pip = await run(
                [
                    sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                    "--disable-pip-version-check", "--dest", str(out),
                    "--index-url", f"https://127.0.0.1:{port}/simple/",
                    "--proxy", proxy_url(server, f"{USER}:{PASSWORD}"),
                    "--cert", str(ppki.ca),
                    "demo-pkg",
                ],
                env={
                    # Only what the test gives: no machine-wide index, CA bundle or links.
                    "PIP_CONFIG_FILE": "/dev/null",
                    "PIP_CERT": str(ppki.ca),
                    "REQUESTS_CA_BUNDLE": str(ppki.ca),
                    "PIP_FIND_LINKS": "",
                    "HOME": str(tmp_path),
                },
                timeout=120,
            )  # fmt: skip
        tunnels = server.metrics.value("fluidity_streams_opened_total", {"kind": "connect"})
    assert pip.returncode == 0, pip.stderr.decode()
    assert [p.name for p in out.iterdir()] == ["demo_pkg-1.0-py3-none-any.whl"]
    assert tunnels >= 1  # the HTTPS index was reached by CONNECT, TLS inside TLS
