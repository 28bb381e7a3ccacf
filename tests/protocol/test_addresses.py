"""IP literals in every inet_aton spelling, and the IPv4 address inside IPv6 ones. No event loop.

How the target policy judges these addresses is tested in test_policy.py.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from fluidity.protocol.addresses import ends_in_number, normalise, parse_ip_literal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.1", "127.0.0.1", id="short-form"),
        pytest.param("0x7f.1", "127.0.0.1", id="hex-short-form"),
        pytest.param("0X7F.0.0.01", "127.0.0.1", id="uppercase-hex-octal"),
        pytest.param("2130706433", "127.0.0.1", id="decimal"),
        pytest.param("017700000001", "127.0.0.1", id="octal-whole"),
        pytest.param("000000000000000000000177.1", "127.0.0.1", id="octal-long-zeros"),
        pytest.param("0x000000000000000000007f000001", "127.0.0.1", id="hex-long-zeros"),
        pytest.param("0", "0.0.0.0", id="zero"),
        pytest.param("4294967295", "255.255.255.255", id="largest-decimal"),
        pytest.param("[::1]", "::1", id="bracketed-v6"),
        pytest.param("::FFFF:127.0.0.1", "::ffff:7f00:1", id="uppercase-mapped"),
    ],
)
def test_parse_ip_literal_reads_what_inet_aton_reads(text: str, expected: str) -> None:
    assert parse_ip_literal(text) == ip_address(expected)


@pytest.mark.parametrize(
    "text", ["example.com", "localhost", "1e100.net", "123.example.com", "0x7f.example", "a"]
)
def test_parse_ip_literal_leaves_names_alone(text: str) -> None:
    assert parse_ip_literal(text) is None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("::ffff:10.0.0.1", "10.0.0.1", id="ipv4-mapped"),
        pytest.param("::10.0.0.1", "10.0.0.1", id="ipv4-compatible"),
        pytest.param("::ffff:0:10.0.0.1", "10.0.0.1", id="ipv4-translated"),
        pytest.param("64:ff9b::10.0.0.1", "10.0.0.1", id="nat64"),
        pytest.param("64:ff9b:1:a00:0:100::", "10.0.0.1", id="nat64-local-use"),
        pytest.param("2002:a00:1::", "10.0.0.1", id="6to4"),
        pytest.param("2002:a00:1:ffff::1", "10.0.0.1", id="6to4-with-host-bits"),
        pytest.param("::", "::", id="unspecified-stays"),
        pytest.param("::1", "::1", id="loopback-stays"),
        pytest.param("64:ff9c::a00:1", "64:ff9c::a00:1", id="beside-nat64-stays"),
        pytest.param("2606:4700::1111", "2606:4700::1111", id="global-v6-stays"),
        pytest.param("fe80::1", "fe80::1", id="link-local-stays"),
        pytest.param("10.0.0.1", "10.0.0.1", id="ipv4-stays"),
    ],
)
def test_normalise_finds_the_embedded_ipv4_address(address: str, expected: str) -> None:
    assert normalise(ip_address(address)) == ip_address(expected)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("1.2.3.4", True, id="dotted"),
        pytest.param("example.123.", True, id="numeric-label-trailing-dot"),
        pytest.param("host.0x7f", True, id="hex-label"),
        pytest.param("2130706433", True, id="one-number"),
        pytest.param("123.example.com", False, id="numeric-first-label"),
        pytest.param("1e100.net", False, id="name"),
        pytest.param("::1", False, id="ipv6"),
        pytest.param("10.0.0.0/8", False, id="cidr-prefix-is-not-a-label"),
    ],
)
def test_ends_in_number_reads_the_last_label_only(host: str, expected: bool) -> None:
    assert ends_in_number(host) is expected
