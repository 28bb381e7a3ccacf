"""Finding the proxy: PAC files (evaluated by pypac), HTTPS_PROXY and NO_PROXY."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluidity.agent.pac import evaluate_pac, find_proxies, load_pac_script, pac_url_for
from fluidity.errors import ConfigError, PacError
from fluidity.protocol.proxyroute import (
    DIRECT,
    Credentials,
    ProxyChoice,
    no_proxy_matches,
    parse_pac_result,
    proxy_from_environment,
)

WAIT = 10.0  # seconds: the bound on every network wait in this file

CORPORATE_PAC = r"""
// A PAC file like the ones corporate networks publish.
function FindProxyForURL(url, host) {
  if (isPlainHostName(host) || dnsDomainIs(host, ".corp.example")) return "DIRECT";
  if (shExpMatch(host, "*.lab.example")) return "PROXY lab-proxy.corp.example:8080";
  if (/^\d+\.\d+\.\d+\.\d+$/.test(host) && isInNet(host, "10.0.0.0", "255.0.0.0"))
    return "DIRECT";
  if (shExpMatch(url, "https:*"))
    return "PROXY proxy.corp.example:3128; PROXY backup.corp.example:3128; DIRECT";
  return "PROXY proxy.corp.example:3128";
}
"""

MAIN = ProxyChoice("http", "proxy.corp.example", 3128)
BACKUP = ProxyChoice("http", "backup.corp.example", 3128)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("intranet", [DIRECT]),
        ("wiki.corp.example", [DIRECT]),
        ("build.lab.example", [ProxyChoice("http", "lab-proxy.corp.example", 8080)]),
        ("10.20.30.40", [DIRECT]),
        ("11.20.30.40", [MAIN, BACKUP, DIRECT]),
        ("fluidity.example.net", [MAIN, BACKUP, DIRECT]),
    ],
)
def test_a_corporate_pac_file_is_evaluated_for_the_server_url(
    host: str, expected: list[ProxyChoice]
) -> None:
    answer = evaluate_pac(CORPORATE_PAC, pac_url_for(host, 443), host)
    assert parse_pac_result(answer) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("DIRECT", [DIRECT]),
        ("", [DIRECT]),
        ("PROXY p.corp:3128", [ProxyChoice("http", "p.corp", 3128)]),
        ("proxy p.corp:3128;direct", [ProxyChoice("http", "p.corp", 3128), DIRECT]),
        (" HTTP a:1 ;  HTTPS b:2 ; ", [ProxyChoice("http", "a", 1), ProxyChoice("https", "b", 2)]),
        (
            "SOCKS s:1080; SOCKS4 t:1080",
            [ProxyChoice("socks5", "s", 1080), ProxyChoice("socks4", "t", 1080)],
        ),
        ("PROXY [2001:db8::1]:3128", [ProxyChoice("http", "2001:db8::1", 3128)]),
    ],
)
def test_pac_answers_parse_in_order(answer: str, expected: list[ProxyChoice]) -> None:
    assert parse_pac_result(answer) == expected


@pytest.mark.parametrize(
    "answer", ["PROXY", "PROXY p.corp", "PROXY p.corp:port", "FTP f:21", "PROXY a:1 extra"]
)
def test_malformed_pac_answers_are_errors_that_quote_them(answer: str) -> None:
    with pytest.raises(PacError, match="the PAC file answered"):
        parse_pac_result(answer)


def test_choices_print_as_pac_entries() -> None:
    assert [str(c) for c in parse_pac_result("PROXY a:1; SOCKS5 [::1]:2; DIRECT")] == [
        "PROXY a:1",
        "SOCKS5 [::1]:2",
        "DIRECT",
    ]


def test_the_url_asked_about_has_only_scheme_host_and_port() -> None:
    assert pac_url_for("fluidity.example.net", 443) == "https://fluidity.example.net:443/"
    assert pac_url_for("2001:db8::1", 8443) == "https://[2001:db8::1]:8443/"


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(
            "function FindProxyForURL(url, host) { return undefinedThing(); }", id="error"
        ),
        pytest.param("var x = 1;", id="no-function"),
        pytest.param("function FindProxyForURL(url, host) {", id="syntax"),
    ],
)
def test_broken_pac_files_are_pac_errors(script: str) -> None:
    with pytest.raises(PacError):
        evaluate_pac(script, "https://a.example:443/", "a.example")


# -- fetching ----------------------------------------------------------------------------


class _PacHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/proxy.pac":
            self.send_error(404)
            return
        body = CORPORATE_PAC.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ns-proxy-autoconfig")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def pac_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PacHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


async def test_find_proxies_fetches_over_http_and_evaluates(
    pac_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The PAC file is fetched without a proxy, even when the environment names one.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    choices = await find_proxies(
        f"{pac_server}/proxy.pac", "fluidity.example.net", 443, timeout=WAIT
    )
    assert choices == [MAIN, BACKUP, DIRECT]


async def test_find_proxies_reads_file_urls(tmp_path: Path) -> None:
    pac = tmp_path / "proxy.pac"
    pac.write_text(CORPORATE_PAC)
    assert await find_proxies(pac.as_uri(), "wiki.corp.example", 443, timeout=WAIT) == [DIRECT]


def test_a_missing_pac_file_names_the_http_status(pac_server: str) -> None:
    with pytest.raises(PacError, match=r"cannot fetch the PAC file .*/nope\.pac: HTTP 404"):
        load_pac_script(f"{pac_server}/nope.pac", timeout=WAIT)


def test_a_missing_local_pac_file_is_named(tmp_path: Path) -> None:
    location = (tmp_path / "absent.pac").as_uri()
    with pytest.raises(PacError, match=f"cannot fetch the PAC file {location}"):
        load_pac_script(location, timeout=WAIT)


def test_only_http_https_and_file_pac_urls_are_accepted() -> None:
    with pytest.raises(PacError, match="must be an http://, https:// or file:// URL"):
        load_pac_script("ftp://wpad/proxy.pac", timeout=WAIT)


async def test_a_pac_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts in the kernel's backlog, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(PacError, match="PAC file"):
            await find_proxies(f"http://127.0.0.1:{port}/proxy.pac", "a.example", 443, timeout=0.3)


# -- the environment -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "matches"),
    [
        ("a.corp.example", 443, "corp.example", True),
        ("corp.example", 443, "corp.example", True),
        ("a.corp.example", 443, ".corp.example", True),
        ("a.corp.example", 443, "*.corp.example", True),
        ("evilcorp.example", 443, "corp.example", False),
        ("A.Corp.Example.", 443, "corp.example", True),
        ("anything.example", 443, "*", True),
        ("10.1.2.3", 443, "localhost, 10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("192.0.2.1", 443, "192.0.2.1", True),
        ("2001:db8::5", 443, "2001:db8::/32", True),
        ("[::1]", 443, "[::1]:443", True),
        ("server.example", 443, "server.example:8443", False),
        ("server.example", 8443, "server.example:8443", True),
        ("server.example", 443, "", False),
        ("10.1.2.3", 443, "ten.example", False),
    ],
)
def test_no_proxy_rules(host: str, port: int, no_proxy: str, matches: bool) -> None:
    assert no_proxy_matches(host, port, no_proxy) is matches


def test_https_proxy_with_credentials_and_no_scheme() -> None:
    env = {"HTTPS_PROXY": "http://CORP%5Calice:p%40ss@proxy.corp:3128"}
    assert proxy_from_environment("s.example", 443, env) == (
        [ProxyChoice("http", "proxy.corp", 3128)],
        Credentials("CORP\\alice", "p@ss"),
    )
    bare = proxy_from_environment("s.example", 443, {"https_proxy": "proxy.corp:8080"})
    assert bare == ([ProxyChoice("http", "proxy.corp", 8080)], Credentials())


def test_lower_case_variables_win_and_no_proxy_sends_direct() -> None:
    env = {
        "https_proxy": "http://lower:1",
        "HTTPS_PROXY": "http://upper:2",
        "no_proxy": "example.org",
        "NO_PROXY": "s.example",
    }
    assert proxy_from_environment("s.example", 443, env)[0] == [ProxyChoice("http", "lower", 1)]
    assert proxy_from_environment("www.example.org", 443, env)[0] == [DIRECT]


def test_no_https_proxy_means_direct() -> None:
    assert proxy_from_environment("s.example", 443, {"HTTP_PROXY": "http://p:1"})[0] == [DIRECT]


def test_a_bad_https_proxy_is_a_config_error_without_the_password() -> None:
    with pytest.raises(
        ConfigError, match=r"HTTPS_PROXY: 'https://u:\*\*\*@p:1' is not supported"
    ) as caught:
        proxy_from_environment("s.example", 443, {"HTTPS_PROXY": "https://u:secret@p:1"})
    assert "secret" not in str(caught.value)
