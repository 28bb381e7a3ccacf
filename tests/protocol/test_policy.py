"""The server's target policy: what an agent may make the server dial. No event loop.

The default-deny ranges are written out below as the design states them, apart from
the implementation's own table, so a range missing or mistyped there fails here.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fluidity.errors import ConfigError, PolicyRefused
from fluidity.protocol.addresses import IPAddress, normalise, parse_ip_literal
from fluidity.protocol.policy import TargetPolicy, Verdict

DEFAULT = TargetPolicy()
PORT = 443
NAME = "innocent.example"  # a name whose DNS answer the tests make up

SPEC_DENIED_V4 = [
    ip_network(cidr)
    for cidr in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
    )
]
SPEC_DENIED_V6 = [
    ip_network(cidr)
    for cidr in ("::/128", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8", "fec0::/10")
]

# Hypothesis runs are bounded and derandomized: the same examples on every run.
PROPERTY = settings(max_examples=150, derandomize=True, deadline=None)


def refused(verdict: Verdict, *fragments: str) -> bool:
    return not verdict.allowed and all(f in verdict.reason for f in fragments)


# ------------------------------------------------------------- default deny ----

DENIED = [
    pytest.param("0.0.0.0", "unspecified", id="unspecified-0.0.0.0"),
    pytest.param("0.255.255.255", "unspecified", id="unspecified-0.255.255.255"),
    pytest.param("10.0.0.0", "private (RFC 1918)", id="rfc1918-10.0.0.0"),
    pytest.param("10.255.255.255", "private (RFC 1918)", id="rfc1918-10.255.255.255"),
    pytest.param("172.16.0.0", "private (RFC 1918)", id="rfc1918-172.16.0.0"),
    pytest.param("172.31.255.255", "private (RFC 1918)", id="rfc1918-172.31.255.255"),
    pytest.param("192.168.0.0", "private (RFC 1918)", id="rfc1918-192.168.0.0"),
    pytest.param("192.168.255.255", "private (RFC 1918)", id="rfc1918-192.168.255.255"),
    pytest.param("100.64.0.0", "CGNAT", id="cgnat-100.64.0.0"),
    pytest.param("100.127.255.255", "CGNAT", id="cgnat-100.127.255.255"),
    pytest.param("127.0.0.1", "loopback", id="loopback-127.0.0.1"),
    pytest.param("127.255.255.254", "loopback", id="loopback-127.255.255.254"),
    pytest.param("169.254.169.254", "link-local (cloud metadata)", id="metadata-169.254.169.254"),
    pytest.param("169.254.170.2", "link-local (cloud credentials", id="credentials-169.254.170.2"),
    pytest.param("169.254.0.1", "link-local", id="link-local-169.254.0.1"),
    pytest.param("169.254.255.255", "link-local", id="link-local-169.254.255.255"),
    pytest.param("192.0.0.0", "IETF protocol assignments", id="ietf-192.0.0.0"),
    pytest.param("192.0.0.255", "IETF protocol assignments", id="ietf-192.0.0.255"),
    pytest.param("198.18.0.0", "benchmarking", id="benchmarking-198.18.0.0"),
    pytest.param("198.19.255.255", "benchmarking", id="benchmarking-198.19.255.255"),
    pytest.param("224.0.0.1", "multicast", id="multicast-224.0.0.1"),
    pytest.param("239.255.255.255", "multicast", id="multicast-239.255.255.255"),
    pytest.param("240.0.0.0", "reserved", id="reserved-240.0.0.0"),
    pytest.param("255.255.255.254", "reserved", id="reserved-255.255.255.254"),
    pytest.param("255.255.255.255", "broadcast", id="broadcast-255.255.255.255"),
    pytest.param("::", "unspecified", id="unspecified-::"),
    pytest.param("::1", "loopback", id="loopback-::1"),
    pytest.param("fe80::1", "link-local", id="link-local-fe80::1"),
    pytest.param("febf:ffff::1", "link-local", id="link-local-febf:ffff::1"),
    pytest.param("fc00::1", "unique-local", id="unique-local-fc00::1"),
    pytest.param("fdff:ffff::1", "unique-local", id="unique-local-fdff:ffff::1"),
    pytest.param("fd00:ec2::254", "cloud metadata", id="metadata-fd00:ec2::254"),
    pytest.param("fec0::1", "site-local", id="site-local-fec0::1"),
    pytest.param("feff:ffff::1", "site-local", id="site-local-feff:ffff::1"),
    pytest.param("ff02::1", "multicast", id="multicast-ff02::1"),
    pytest.param("ffff::1", "multicast", id="multicast-ffff::1"),
]

# Just outside the denied ranges: public, so allowed by default.
PUBLIC = [
    "1.1.1.1",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "fbff:ffff::1",
    "fe7f:ffff::1",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "named"), DENIED)
def test_default_policy_refuses_a_denied_literal_naming_its_range(address: str, named: str) -> None:
    verdict = DEFAULT.check_request(address, PORT)
    assert refused(verdict, named, "allow it with targets.allow")


@pytest.mark.parametrize(("address", "named"), DENIED)
def test_default_policy_drops_a_denied_resolved_address(address: str, named: str) -> None:
    kept, verdict = DEFAULT.filter_addresses(NAME, PORT, [ip_address(address)])
    assert kept == []
    assert refused(verdict, named, address)


@pytest.mark.parametrize("address", PUBLIC)
def test_default_policy_allows_public_addresses(address: str) -> None:
    assert DEFAULT.check_request(address, PORT).allowed
    kept, verdict = DEFAULT.filter_addresses(NAME, PORT, [ip_address(address)])
    assert kept == [ip_address(address)]
    assert verdict.allowed


def test_metadata_reason_reads_as_documented() -> None:
    verdict = DEFAULT.check_request("169.254.169.254", PORT)
    assert verdict == Verdict(
        False, "169.254.169.254 is link-local (cloud metadata); allow it with targets.allow"
    )


# --------------------------------------------------------- address spellings ----

METADATA = IPv4Address("169.254.169.254")

METADATA_SPELLINGS = [
    pytest.param("169.254.169.254", id="dotted"),
    pytest.param("169.254.169.254.", id="trailing-dot"),
    pytest.param("2852039166", id="decimal"),
    pytest.param("0xA9FEA9FE", id="hex"),
    pytest.param("0xa9fea9fe", id="hex-lowercase"),
    pytest.param("0251.0376.0251.0376", id="octal"),
    pytest.param("169.254.43518", id="three-parts"),
    pytest.param("169.16689662", id="two-parts"),
    pytest.param("0xA9.0xFE.0xA9FE", id="hex-parts"),
    pytest.param("0251.254.0xa9.0376", id="mixed-bases"),
    pytest.param("::ffff:169.254.169.254", id="ipv4-mapped-dotted"),
    pytest.param("[::ffff:a9fe:a9fe]", id="ipv4-mapped-bracketed"),
    pytest.param("0:0:0:0:0:ffff:a9fe:a9fe", id="ipv4-mapped-exploded"),
    pytest.param("::169.254.169.254", id="ipv4-compatible"),
    pytest.param("::ffff:0:a9fe:a9fe", id="ipv4-translated"),
    pytest.param("64:ff9b::a9fe:a9fe", id="nat64"),
    pytest.param("64:ff9b::169.254.169.254", id="nat64-dotted"),
    pytest.param("64:ff9b:1:a9fe:a9:fe00::", id="nat64-local-use"),
    pytest.param("2002:a9fe:a9fe::1", id="6to4"),
]


@pytest.mark.parametrize("text", METADATA_SPELLINGS)
def test_every_spelling_of_the_metadata_address_is_that_address(text: str) -> None:
    literal = parse_ip_literal(text)
    assert literal is not None
    assert normalise(literal) == METADATA


@pytest.mark.parametrize("text", METADATA_SPELLINGS)
def test_every_spelling_of_the_metadata_address_is_refused(text: str) -> None:
    assert refused(DEFAULT.check_request(text, PORT), "cloud metadata")
    literal = parse_ip_literal(text)
    assert literal is not None
    kept, verdict = DEFAULT.filter_addresses(NAME, PORT, [literal])
    assert kept == []
    assert refused(verdict, "cloud metadata")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("1.2.3.256", "out of range", id="octet-too-big"),
        pytest.param("256.1.1.1", "out of range", id="leading-part-too-big"),
        pytest.param("1.2.65536", "out of range", id="short-form-too-big"),
        pytest.param("4294967296", "out of range", id="decimal-too-big"),
        pytest.param("0x100000000", "out of range", id="hex-too-big"),
        pytest.param("9" * 5000, "out of range", id="huge-decimal"),
        pytest.param("1.2.3.4.5", "not an IPv4 address", id="five-parts"),
        pytest.param("08.1.1.1", "not an IPv4 address", id="bad-octal-digit"),
        pytest.param("1..1", "not an IPv4 address", id="empty-part"),
        pytest.param("0x.1", "not an IPv4 address", id="hex-without-digits"),
        pytest.param("example.123", "not an IPv4 address", id="numeric-tld"),
        pytest.param("fe80::1%eth0", "zone id", id="zone-id"),
        pytest.param("[fe80::1%25eth0]", "zone id", id="bracketed-zone-id"),
        pytest.param("[::1", "not a valid IPv6", id="unbalanced-bracket"),
        pytest.param("::g", "not a valid IPv6", id="bad-hex-group"),
        pytest.param("1.2.3.4:80", "not a valid IPv6", id="with-port"),
    ],
)
def test_parse_ip_literal_rejects_malformed_addresses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_ip_literal(text)
    assert refused(DEFAULT.check_request(text, PORT), problem)


# ------------------------------------------------------------ allow and deny ----


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::ffff:127.0.0.1", "0x7f.1", "2130706433", "127.255.255.254"]
)
def test_allow_cidr_exempts_from_the_default_deny_in_every_spelling(host: str) -> None:
    policy = TargetPolicy.from_config(allow=["127.0.0.0/8"])
    verdict = policy.check_request(host, PORT)
    assert verdict.allowed
    assert "targets.allow[0] '127.0.0.0/8'" in verdict.reason


def test_allow_cidr_keeps_resolved_addresses_as_resolved() -> None:
    policy = TargetPolicy.from_config(allow=["127.0.0.0/8"])
    resolved: list[IPAddress] = [ip_address("::ffff:127.0.0.1"), ip_address("127.0.0.1")]
    kept, verdict = policy.filter_addresses("localhost.example", PORT, resolved)
    assert kept == resolved  # dialed as resolved; judged as 127.0.0.1
    assert isinstance(kept[0], IPv6Address)
    assert verdict.allowed


def test_allow_covers_only_its_own_range() -> None:
    policy = TargetPolicy.from_config(allow=["127.0.0.0/8"])
    assert refused(policy.check_request("10.0.0.1", PORT), "private")
    assert refused(policy.check_request("::1", PORT), "loopback")


def test_allow_is_an_exemption_not_a_whitelist() -> None:
    policy = TargetPolicy.from_config(allow=["10.0.0.0/8"])
    assert policy.check_request("8.8.8.8", PORT).allowed
    assert policy.filter_addresses(NAME, PORT, [ip_address("8.8.8.8")])[0] != []


def test_allow_with_a_port_exempts_that_port_only() -> None:
    policy = TargetPolicy.from_config(allow=["10.0.0.5:5432", "[fd00::5]:5432"])
    assert policy.check_request("10.0.0.5", 5432).allowed
    assert refused(policy.check_request("10.0.0.5", 22), "private")
    assert policy.check_request("fd00::5", 5432).allowed
    assert refused(policy.check_request("[fd00::5]", 22), "unique-local")


def test_allow_glob_exempts_the_addresses_its_names_resolve_to() -> None:
    policy = TargetPolicy.from_config(allow=["*.corp.example"])
    private = [ip_address("10.0.0.5")]
    assert policy.filter_addresses("db.corp.example", PORT, private)[0] == private
    assert policy.filter_addresses("DB.Corp.Example.", PORT, private)[0] == private
    assert policy.filter_addresses("corp.example", PORT, private)[0] == []
    assert policy.filter_addresses("evil.example", PORT, private)[0] == []


def test_deny_cidr_wins_over_allow_cidr() -> None:
    policy = TargetPolicy.from_config(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert refused(policy.check_request("10.1.2.3", PORT), "targets.deny[0] '10.1.0.0/16'")
    assert policy.check_request("10.2.0.1", PORT).allowed


def test_deny_cidr_wins_over_allow_glob() -> None:
    policy = TargetPolicy.from_config(allow=["*.corp.example"], deny=["10.9.0.0/16"])
    resolved: list[IPAddress] = [ip_address("10.0.0.5"), ip_address("10.9.0.5")]
    kept, verdict = policy.filter_addresses("db.corp.example", PORT, resolved)
    assert kept == [ip_address("10.0.0.5")]
    assert "10.9.0.5 is denied by targets.deny[0] '10.9.0.0/16'" in verdict.reason


def test_deny_cidr_matches_public_addresses_in_every_spelling() -> None:
    target = IPv4Address("93.184.216.34")
    policy = TargetPolicy.from_config(deny=["93.184.216.0/24"])
    spellings = [str(target), str(int(target)), hex(int(target)), f"::ffff:{target}"]
    for host in spellings:
        assert refused(policy.check_request(host, PORT), "targets.deny[0]"), host
    nat64 = IPv6Address(int(IPv6Address("64:ff9b::")) | int(target))
    assert policy.filter_addresses(NAME, PORT, [nat64, target])[0] == []


def test_deny_ipv6_cidr_matches_the_address_as_resolved_too() -> None:
    policy = TargetPolicy.from_config(deny=["64:ff9b::/96"])
    nat64 = ip_address("64:ff9b::808:808")
    assert DEFAULT.filter_addresses(NAME, PORT, [nat64])[0] == [nat64]
    kept, verdict = policy.filter_addresses(NAME, PORT, [nat64])
    assert kept == []
    assert refused(verdict, "targets.deny[0] '64:ff9b::/96'")


def test_deny_glob_refuses_a_name_before_it_is_resolved() -> None:
    policy = TargetPolicy.from_config(deny=["*.evil.example"])
    assert refused(policy.check_request("a.evil.example", PORT), "targets.deny[0]")
    assert refused(policy.check_request("A.B.EVIL.EXAMPLE.", PORT), "targets.deny[0]")
    assert policy.check_request("evil.example", PORT).allowed
    kept, verdict = policy.filter_addresses("a.evil.example", PORT, [ip_address("8.8.8.8")])
    assert kept == []
    assert refused(verdict, "targets.deny[0] '*.evil.example'")


def test_deny_glob_is_case_insensitive_and_ignores_a_trailing_dot() -> None:
    policy = TargetPolicy.from_config(deny=["Example.COM."])
    assert not policy.check_request("example.com", PORT).allowed
    assert not policy.check_request("EXAMPLE.com.", PORT).allowed
    assert policy.check_request("www.example.com", PORT).allowed


def test_deny_glob_with_a_port_refuses_that_port_for_names_and_literals() -> None:
    policy = TargetPolicy.from_config(deny=["*:25"])
    assert refused(policy.check_request("mail.example", 25), "targets.deny[0] '*:25'")
    assert refused(policy.check_request("8.8.8.8", 25), "targets.deny[0]")
    assert refused(policy.check_request("0x08080808", 25), "targets.deny[0]")
    assert policy.check_request("mail.example", 587).allowed


def test_ports_limit_which_ports_may_be_dialed() -> None:
    policy = TargetPolicy.from_config(ports=[443, 80])
    assert policy.check_request("example.com", 443).allowed
    assert refused(policy.check_request("example.com", 22), "targets.ports (80, 443)")
    assert refused(policy.check_request("8.8.8.8", 22), "targets.ports")
    assert policy.filter_addresses("example.com", 22, [ip_address("8.8.8.8")])[0] == []


def test_an_allow_entry_does_not_open_a_port_outside_targets_ports() -> None:
    policy = TargetPolicy.from_config(allow=["10.0.0.5:22", "*.corp.example"], ports=[443])
    assert refused(policy.check_request("10.0.0.5", 22), "targets.ports")
    assert refused(policy.check_request("db.corp.example", 22), "targets.ports")


@pytest.mark.parametrize("port", [1, 80, 65535])
def test_without_targets_ports_any_port_may_be_dialed(port: int) -> None:
    assert DEFAULT.check_request("example.com", port).allowed


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_port_outside_1_to_65535_is_refused(port: int) -> None:
    assert refused(DEFAULT.check_request("example.com", port), "not a port number")


# ------------------------------------------------------------ names checked ----


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "localhost.", "api.localhost", "a.b.localhost."]
)
def test_localhost_names_are_refused_before_resolving(host: str) -> None:
    assert refused(DEFAULT.check_request(host, PORT), "loopback name", "targets.allow")


@pytest.mark.parametrize("host", ["localhost.example", "mylocalhost", "localhostx.example"])
def test_names_merely_containing_localhost_pass(host: str) -> None:
    assert DEFAULT.check_request(host, PORT).allowed


def test_an_allow_glob_admits_a_localhost_name() -> None:
    only_localhost = TargetPolicy.from_config(allow=["localhost"])
    assert only_localhost.check_request("localhost", PORT).allowed
    assert not only_localhost.check_request("api.localhost", PORT).allowed
    subdomains = TargetPolicy.from_config(allow=["*.localhost:8000"])
    assert subdomains.check_request("api.localhost", 8000).allowed
    assert not subdomains.check_request("api.localhost", 8001).allowed


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        # Python's getaddrinfo() IDNA-encodes these two into 127.0.0.1.
        pytest.param("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "not ASCII", id="fullwidth-digits"),
        pytest.param("127\u30020\u30020\u30021", "not ASCII", id="ideographic-full-stops"),
        pytest.param("b\u00fccher.example", "IDNA", id="unicode-name"),
        pytest.param("ex ample.com", "not a valid host name", id="space"),
        pytest.param("example.com\r\n", "not a valid host name", id="crlf"),
        pytest.param("exa\x00mple.com", "not a valid host name", id="nul"),
        pytest.param("", "not a valid host name", id="empty"),
        pytest.param(".", "not a valid host name", id="only-a-dot"),
        pytest.param("a..example", "not a valid host name", id="empty-label"),
        pytest.param("x" * 64 + ".example", "not a valid host name", id="label-too-long"),
        pytest.param("a." * 127 + "example", "not a valid host name", id="name-too-long"),
        pytest.param("user@example.com", "not a valid host name", id="userinfo"),
        pytest.param("example.com/path", "not a valid host name", id="path"),
    ],
)
def test_malformed_hosts_are_refused(host: str, problem: str) -> None:
    assert refused(DEFAULT.check_request(host, PORT), problem)
    assert DEFAULT.filter_addresses(host, PORT, [ip_address("8.8.8.8")])[0] == []


# ------------------------------------------------------- resolved addresses ----


def test_a_name_resolving_to_public_and_private_addresses_keeps_only_the_public() -> None:
    resolved = [
        ip_address(a)
        for a in (
            "10.0.0.1",
            "93.184.216.34",
            "::1",
            "169.254.169.254",
            "2606:2800:220:1::1",
            "::ffff:192.168.1.1",
        )
    ]
    kept, verdict = DEFAULT.filter_addresses("mixed.example", PORT, resolved)
    assert kept == [ip_address("93.184.216.34"), ip_address("2606:2800:220:1::1")]
    assert verdict.allowed
    assert "dropped 4" in verdict.reason


def test_a_name_resolving_only_to_private_addresses_is_refused_with_each_reason() -> None:
    resolved = [ip_address("10.0.0.1"), ip_address("::ffff:127.0.0.1")]
    kept, verdict = DEFAULT.filter_addresses("inside.example", PORT, resolved)
    assert kept == []
    assert refused(verdict, "inside.example", "10.0.0.1 is private", "127.0.0.1) is loopback")
    with pytest.raises(PolicyRefused) as raised:
        verdict.raise_if_refused()
    assert raised.value.status == 403
    assert str(raised.value) == verdict.reason


def test_a_long_list_of_refusals_is_summarised() -> None:
    resolved = [IPv4Address("10.0.0.0") + i for i in range(5)]
    kept, verdict = DEFAULT.filter_addresses(NAME, PORT, resolved)
    assert kept == []
    assert refused(verdict, "10.0.0.2 is private", "and 2 more")
    assert "10.0.0.3" not in verdict.reason


def test_duplicate_addresses_are_dialed_once_in_resolver_order() -> None:
    a, b = ip_address("2606:4700::1111"), ip_address("1.1.1.1")
    kept, _ = DEFAULT.filter_addresses(NAME, PORT, [a, b, a, b])
    assert kept == [a, b]


def test_no_addresses_is_a_refusal() -> None:
    kept, verdict = DEFAULT.filter_addresses(NAME, PORT, [])
    assert kept == []
    assert refused(verdict, "resolved to no addresses")


def test_an_allowed_verdict_does_not_raise() -> None:
    DEFAULT.check_request("example.com", PORT).raise_if_refused()


# ------------------------------------------------------------------- config ----


@pytest.mark.parametrize(
    ("entry", "host", "port", "address"),
    [
        pytest.param("93.184.216.0/24", NAME, PORT, "93.184.216.34", id="ipv4-cidr"),
        pytest.param("93.184.216.34", NAME, PORT, "93.184.216.34", id="bare-ipv4"),
        pytest.param("93.184.216.34:8443", NAME, 8443, "93.184.216.34", id="ipv4-port"),
        pytest.param("93.184.216.0/24:8443", NAME, 8443, "93.184.216.34", id="cidr-port"),
        pytest.param("2606:2800::/32", NAME, PORT, "2606:2800::1", id="ipv6-cidr"),
        pytest.param("2606:2800::1", NAME, PORT, "2606:2800::1", id="bare-ipv6"),
        pytest.param("[2606:2800::1]:8443", NAME, 8443, "2606:2800::1", id="ipv6-port"),
        pytest.param("[2606:2800::/32]:8443", NAME, 8443, "2606:2800::1", id="ipv6-cidr-port"),
        pytest.param("*.example.com", "a.b.example.com", PORT, "8.8.8.8", id="glob"),
        pytest.param("api-?.example.com", "api-1.example.com", PORT, "8.8.8.8", id="glob-?"),
        pytest.param("example.com:8443", "example.com", 8443, "8.8.8.8", id="name-port"),
        pytest.param(" example.com ", "example.com", PORT, "8.8.8.8", id="outer-spaces"),
        pytest.param("EXAMPLE.com.", "example.com", PORT, "8.8.8.8", id="case-and-dot"),
    ],
)
def test_valid_deny_entries_refuse_what_they_name(
    entry: str, host: str, port: int, address: str
) -> None:
    policy = TargetPolicy.from_config(deny=["192.0.2.0/24", entry])
    kept, verdict = policy.filter_addresses(host, port, [ip_address(address)])
    assert kept == []
    assert refused(verdict, f"targets.deny[1] {entry!r}")
    assert DEFAULT.filter_addresses(host, port, [ip_address(address)])[0] != []


def test_an_entry_with_a_port_leaves_other_ports_alone() -> None:
    policy = TargetPolicy.from_config(deny=["93.184.216.34:8443", "example.com:8443"])
    assert policy.check_request("93.184.216.34", PORT).allowed
    assert policy.check_request("example.com", PORT).allowed


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        pytest.param(
            ["ok.example", "10.0.0.0/8", "foo:bar"],
            "targets.deny[2]: 'foo:bar' is not HOST-GLOB[:PORT] or CIDR[:PORT]",
            id="port-not-a-number",
        ),
        pytest.param([""], "targets.deny[0]: '' is not", id="empty"),
        pytest.param(["10.0.0.1/8"], "did you mean 10.0.0.0/8?", id="host-bits-set"),
        pytest.param(["10.0.0.0/33"], "targets.deny[0]: '10.0.0.0/33'", id="prefix-too-long"),
        pytest.param(["300.1.1.1"], "targets.deny[0]: '300.1.1.1'", id="octet-too-big"),
        pytest.param(["example.com:0"], "port '0' is not a number 1-65535", id="port-zero"),
        pytest.param(["example.com:65536"], "port '65536'", id="port-too-big"),
        pytest.param(["example.com:"], "port ''", id="port-empty"),
        pytest.param(["exa mple.com"], "a host glob has letters", id="space"),
        pytest.param(["ex!ample.com"], "a host glob has letters", id="bang"),
        pytest.param(["[ab]*.example.com"], "brackets hold an IPv6", id="glob-class"),
        pytest.param(["10.*"], "write a CIDR", id="ip-shaped-glob"),
        pytest.param(["2852039166"], "did you mean 169.254.169.254?", id="decimal-ip"),
        pytest.param(["0xa9fe0000/16"], "did you mean 169.254.0.0/16?", id="hex-cidr"),
        pytest.param(["0x7f.1"], "did you mean 127.0.0.1?", id="hex-ip"),
        pytest.param(["example.123"], "targets.deny[0]: 'example.123'", id="numeric-tld"),
        pytest.param(["1?.*.*.*"], "write a CIDR", id="ip-shaped-glob-?"),
        pytest.param(["[::1"], "brackets hold an IPv6", id="unclosed-bracket"),
        pytest.param(["[1.2.3.4]:80"], "brackets hold an IPv6", id="bracketed-ipv4"),
        pytest.param(["[::1]:https"], "port 'https'", id="named-port"),
        pytest.param(["fe80::%eth0/64"], "zone ids", id="zone-id"),
        pytest.param(["a:b:c"], "targets.deny[0]: 'a:b:c'", id="colons"),
        pytest.param([42], "targets.deny[0]: 42 is not a string", id="not-a-string"),
        pytest.param("10.0.0.0/8", "expected a list of entries", id="string-not-list"),
    ],
)
def test_malformed_entries_are_config_errors_naming_the_entry(
    entries: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        TargetPolicy.from_config(deny=entries)
    assert message in str(raised.value)


def test_malformed_allow_entries_name_targets_allow() -> None:
    with pytest.raises(ConfigError, match=r"^targets\.allow\[1\]: 'foo:bar' is not"):
        TargetPolicy.from_config(allow=["10.0.0.0/8", "foo:bar"])


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        pytest.param([443, 0], "targets.ports[1]: 0 is not a port number", id="zero"),
        pytest.param([65536], "targets.ports[0]: 65536", id="too-big"),
        pytest.param(["443"], "targets.ports[0]: '443'", id="string"),
        pytest.param([True], "targets.ports[0]: True", id="bool"),
        pytest.param("443", "expected a list of port numbers", id="string-not-list"),
    ],
)
def test_malformed_ports_are_config_errors(ports: list[int], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        TargetPolicy.from_config(ports=ports)
    assert message in str(raised.value)


# --------------------------------------------------------------- properties ----


def address_in(network: IPv4Network | IPv6Network) -> st.SearchStrategy[int]:
    return st.integers(int(network.network_address), int(network.broadcast_address))


denied_ipv4 = st.sampled_from(SPEC_DENIED_V4).flatmap(address_in).map(IPv4Address)
denied_ipv6 = st.sampled_from(SPEC_DENIED_V6).flatmap(address_in).map(IPv6Address)
any_ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
public_ipv4 = any_ipv4.filter(lambda a: not any(a in n for n in SPEC_DENIED_V4))


def number_spelling(value: int) -> st.SearchStrategy[str]:
    """``value`` as inet_aton reads one part: decimal, 0x-hex or 0-prefixed octal."""
    padding = st.integers(0, 3).map(lambda n: "0" * n)
    hex_forms = st.tuples(st.sampled_from(["0x", "0X"]), padding, st.sampled_from("xX"))
    return st.one_of(
        st.just(str(value)),
        hex_forms.map(lambda t: f"{t[0]}{t[1]}{value:{t[2]}}"),
        padding.map(lambda zeros: f"0{zeros}{value:o}"),
    )


@st.composite
def inet_aton_spelling(draw: st.DrawFn, addr: IPv4Address) -> str:
    """One to four parts, each in any base: the last part holds all the remaining bytes."""
    parts = draw(st.integers(1, 4))
    head = list(addr.packed[: parts - 1])
    last = int.from_bytes(addr.packed[parts - 1 :], "big")
    text = ".".join(draw(number_spelling(value)) for value in [*head, last])
    return text + draw(st.sampled_from(["", "."]))


def embedding(kind: str, addr: IPv4Address, filler: bytes) -> IPv6Address:
    """``addr`` carried in an IPv6 address of the given kind, built byte by byte."""
    v4 = addr.packed
    packed = {
        "ipv4-mapped": bytes(10) + b"\xff\xff" + v4,
        "ipv4-compatible": bytes(12) + v4,
        "ipv4-translated": bytes(8) + b"\xff\xff\x00\x00" + v4,
        "nat64": bytes.fromhex("0064ff9b") + bytes(8) + v4,
        "nat64-local-use": bytes.fromhex("0064ff9b0001") + v4[:2] + b"\0" + v4[2:] + filler[:5],
        "6to4": b"\x20\x02" + v4 + filler,
    }[kind]
    return IPv6Address(packed)


EMBEDDINGS = [
    "ipv4-mapped",
    "ipv4-compatible",
    "ipv4-translated",
    "nat64",
    "nat64-local-use",
    "6to4",
]


@st.composite
def spelling(draw: st.DrawFn, addr: IPv4Address) -> tuple[str, str, IPAddress]:
    """(kind, text, resolved): a way to write ``addr`` and what a resolver returns for it."""
    kind = draw(st.sampled_from(["dotted", "decimal", "hex", "octal", "inet_aton", *EMBEDDINGS]))
    if kind not in EMBEDDINGS:
        text = {
            "dotted": str(addr),
            "decimal": str(int(addr)),
            "hex": hex(int(addr)),
            "octal": ".".join(f"0{octet:o}" for octet in addr.packed),
        }.get(kind) or draw(inet_aton_spelling(addr))
        return kind, text, addr
    v6 = embedding(kind, addr, draw(st.binary(min_size=10, max_size=10)))
    forms = [str(v6), v6.exploded, f"[{v6}]", f"[{v6.exploded.upper()}]"]
    if kind == "ipv4-mapped":
        forms.append(f"::ffff:{addr}")
    return kind, draw(st.sampled_from(forms)), v6


@PROPERTY
@given(data=st.data())
def test_no_spelling_of_a_denied_ipv4_address_gets_through(data: st.DataObject) -> None:
    addr = data.draw(denied_ipv4, label="address")
    _, text, resolved = data.draw(spelling(addr), label="spelling")
    assert not DEFAULT.check_request(text, PORT).allowed
    assert DEFAULT.filter_addresses(text, PORT, [resolved])[0] == []
    assert DEFAULT.filter_addresses(NAME, PORT, [resolved])[0] == []


@PROPERTY
@given(addr=denied_ipv6, bracketed=st.booleans())
def test_no_address_in_a_denied_ipv6_range_gets_through(addr: IPv6Address, bracketed: bool) -> None:
    text = f"[{addr}]" if bracketed else str(addr)
    assert not DEFAULT.check_request(text, PORT).allowed
    assert DEFAULT.filter_addresses(NAME, PORT, [addr])[0] == []


@PROPERTY
@given(data=st.data())
def test_public_ipv4_addresses_pass_in_every_spelling(data: st.DataObject) -> None:
    addr = data.draw(public_ipv4, label="address")
    _, text, resolved = data.draw(spelling(addr), label="spelling")
    assert DEFAULT.check_request(text, PORT).allowed
    assert DEFAULT.filter_addresses(NAME, PORT, [resolved])[0] == [resolved]


@PROPERTY
@given(data=st.data())
def test_every_spelling_parses_to_the_address_it_spells(data: st.DataObject) -> None:
    addr = data.draw(any_ipv4, label="address")
    kind, text, resolved = data.draw(spelling(addr), label="spelling")
    assume(not (kind == "ipv4-compatible" and int(addr) <= 1))  # that is :: or ::1
    literal = parse_ip_literal(text)
    assert literal is not None
    assert normalise(literal) == addr
    assert normalise(resolved) == addr


@PROPERTY
@given(data=st.data())
def test_an_allow_entry_covers_its_range_in_every_spelling(data: st.DataObject) -> None:
    network = data.draw(st.sampled_from(SPEC_DENIED_V4), label="network")
    addr = IPv4Address(data.draw(address_in(network), label="address"))
    kind, text, resolved = data.draw(spelling(addr), label="spelling")
    assume(not (kind == "ipv4-compatible" and int(addr) <= 1))  # :: and ::1 are IPv6 ranges
    policy = TargetPolicy.from_config(allow=[str(network)])
    assert policy.check_request(text, PORT).allowed
    assert policy.filter_addresses(NAME, PORT, [resolved])[0] == [resolved]
