"""The client identity allow-list, without a loop: names read from getpeercert, globs matched."""

from __future__ import annotations

import pytest

from fluidity.config.server import ClientsConfig
from fluidity.errors import ConfigError
from fluidity.protocol.identity import ClientIdentity, IdentityAllowList

ALICE = {
    "subject": ((("organizationName", "Example"),), (("commonName", "alice"),)),
    "subjectAltName": (("URI", "fluidity://client/alice"), ("DNS", "Alice.Team.Example")),
    "serialNumber": "8F2A",
}


def test_names_and_serial_are_read_from_getpeercert() -> None:
    identity = ClientIdentity.from_peercert(ALICE)
    assert identity == ClientIdentity(
        "alice", ("Alice.Team.Example",), ("fluidity://client/alice",), 0x8F2A
    )
    assert identity.label == "alice"
    assert str(identity) == "CN=alice, DNS=Alice.Team.Example, URI=fluidity://client/alice"


def test_a_certificate_without_names_is_described_as_such() -> None:
    identity = ClientIdentity.from_peercert({"subject": (), "subjectAltName": "junk"})
    assert identity == ClientIdentity()
    assert (identity.label, str(identity)) == ("agent", "no names")


@pytest.mark.parametrize(
    ("pattern", "admitted"),
    [
        ("alice", True),
        ("ali?e", True),
        ("a*", True),
        ("[ab]lice", True),
        ("ALICE", False),  # a common name is matched exactly
        ("*.team.example", True),  # DNS names case-insensitively
        ("ALICE.TEAM.EXAMPLE", True),
        ("fluidity://client/alice", True),
        ("fluidity://client/*", True),
        ("FLUIDITY://client/alice", False),  # URIs exactly
        ("bob", False),
        ("alice.team", False),
        ("*bob*", False),
    ],
)
def test_a_pattern_matches_the_cn_a_dns_name_or_a_uri(pattern: str, admitted: bool) -> None:
    allow = IdentityAllowList.from_config([pattern])
    assert allow.admits(ClientIdentity.from_peercert(ALICE)) is admitted


def test_an_empty_list_admits_every_client_of_the_ca() -> None:
    assert IdentityAllowList().admits(ClientIdentity())


def test_a_refusal_names_the_certificate_and_the_fix() -> None:
    allow = IdentityAllowList.from_config(["bob", "carol"])
    reason = allow.refusal(ClientIdentity.from_peercert(ALICE))
    assert reason is not None
    assert "CN=alice" in reason and "URI=fluidity://client/alice" in reason
    assert "clients.allow" in reason
    assert allow.refusal(ClientIdentity(common_name="carol")) is None


@pytest.mark.parametrize("bad", ["", "two words", "tab\there", "x" * 256, "nul\x00"])
def test_unusable_patterns_are_config_errors_naming_the_entry(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"clients\.allow: entry \[1\]"):
        IdentityAllowList.from_config(["ok", bad])
    with pytest.raises(ConfigError, match=r"entry \[0\]"):
        ClientsConfig(allow=(bad,))
