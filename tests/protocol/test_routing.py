"""Split routing as a table of cases, and the PAC file it writes, evaluated by pypac."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypac.parser import PACFile  # type: ignore[import-untyped]

from fluidity.errors import ConfigError
from fluidity.protocol.routing import SplitRouting

DIRECT_LIST = [
    "*.corp.example",
    "intranet",
    "build-??.lab",
    "10.0.0.0/8",
    "192.0.2.7",
    "172.16.0.0/12",
    "2001:db8::/32",
]

CASES = [
    # (host, route)
    ("wiki.corp.example", "direct"),
    ("a.b.corp.example", "direct"),
    ("WIKI.Corp.Example", "direct"),
    ("wiki.corp.example.", "direct"),
    ("corp.example", "tunnel"),  # *.corp.example needs a label before the suffix
    ("evilcorp.example", "tunnel"),
    ("intranet", "direct"),
    ("intranet.example.com", "tunnel"),
    ("build-07.lab", "direct"),
    ("build-107.lab", "tunnel"),
    ("10.1.2.3", "direct"),
    ("11.1.2.3", "tunnel"),
    ("172.31.255.255", "direct"),
    ("172.32.0.1", "tunnel"),
    ("192.0.2.7", "direct"),
    ("192.0.2.8", "tunnel"),
    ("2001:db8::1", "direct"),
    ("[2001:db8:ffff::1]", "direct"),
    ("2001:db9::1", "tunnel"),
    ("example.com", "tunnel"),
    ("github.com", "tunnel"),
]


@pytest.fixture(scope="module")
def routing() -> SplitRouting:
    return SplitRouting.from_config(DIRECT_LIST)


@pytest.mark.parametrize(("host", "expected"), CASES)
def test_route(routing: SplitRouting, host: str, expected: str) -> None:
    assert routing.route(host) == expected


def test_ipv4_mapped_ipv6_literal_is_matched_as_ipv4(routing: SplitRouting) -> None:
    assert routing.route("::ffff:10.9.9.9") == "direct"


def test_ip_literals_are_not_matched_against_globs_nor_names_against_networks() -> None:
    routing = SplitRouting.from_config(["10.*", "127.0.0.0/8"])
    assert routing.route("10.1.1.1") == "tunnel"
    assert routing.route("localhost") == "tunnel"  # no DNS lookup


def test_an_empty_list_tunnels_everything() -> None:
    routing = SplitRouting.from_config([])
    assert [routing.route(h) for h in ("intranet", "10.0.0.1", "::1")] == ["tunnel"] * 3


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.0.0/33", "not a network"),
        (".corp.example", r"write \*\.corp\.example"),
        ("host name", "not a host glob"),
        ("[a-z].example", "not a host glob"),
        ("", "expected a host glob or a CIDR"),
        ('x");alert(1);("', "not a host glob"),
    ],
)
def test_bad_entries_are_config_errors_naming_the_key(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^direct\[1\]: .*{message}"):
        SplitRouting.from_config(["intranet", entry])


def test_the_pac_file_agrees_with_route_on_every_case(routing: SplitRouting) -> None:
    pac = PACFile(routing.pac_file("127.0.0.1", 8080))
    for host, expected in CASES:
        bare = host.strip("[]")
        answer = pac.find_proxy_for_url(f"https://{host}/", bare)
        assert answer == ("DIRECT" if expected == "direct" else "PROXY 127.0.0.1:8080"), host


def test_the_pac_file_names_the_agent_port() -> None:
    pac_text = SplitRouting.from_config([]).pac_file("127.0.0.1", 3129)
    assert "PROXY 127.0.0.1:3129" in pac_text
    pac = PACFile(pac_text)
    assert pac.find_proxy_for_url("http://intranet/", "intranet") == "PROXY 127.0.0.1:3129"


def test_the_pac_file_uses_the_pac_builtins(routing: SplitRouting) -> None:
    text = routing.pac_file("127.0.0.1", 8080)
    assert "shExpMatch(" in text and "isInNet(" in text
    assert '["10.0.0.0", "255.0.0.0"]' in text


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_route_answers_for_any_host_text(host: str) -> None:
    assert SplitRouting.from_config(DIRECT_LIST).route(host) in ("direct", "tunnel")
