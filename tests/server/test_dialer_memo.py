"""The dialer remembers policy verdicts: same answers as the policy, bounded memory."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from fluidity.errors import PolicyRefused
from fluidity.protocol.policy import TargetPolicy
from fluidity.protocol.retry import CircuitBreaker
from fluidity.server import dialer
from fluidity.server.dialer import Dialer, DialSettings


def make_dialer() -> Dialer:
    policy = TargetPolicy.from_config(("127.0.0.0/8",), ("127.0.0.9",), ())
    return Dialer(policy, DialSettings(), CircuitBreaker(5, 30.0))


@pytest.mark.parametrize("host", ["127.0.0.9", "10.0.0.1", "0x7f000009", "169.254.169.254"])
async def test_a_refused_target_is_refused_every_time(host: str) -> None:
    d = make_dialer()
    for _ in range(3):
        with pytest.raises(PolicyRefused) as caught:
            await d.dial(f"{host}:80", lambda: None)  # type: ignore[arg-type,return-value]
        assert str(caught.value) == f"{host}:80 refused by policy: " + (
            d.policy.check_request(host, 80).reason
        )


def test_remembered_verdicts_equal_the_policy_s() -> None:
    d = make_dialer()
    for host, port in [("127.0.0.1", 80), ("127.0.0.9", 80), ("example.com", 443)]:
        first, again = d._check_request(host, port), d._check_request(host, port)
        assert first == again == d.policy.check_request(host, port)
    addresses = [ip_address("127.0.0.1"), ip_address("10.1.2.3"), ip_address("127.0.0.9")]
    kept, verdict = d._filter_addresses("example.com", 80, addresses)
    assert (kept, verdict) == d.policy.filter_addresses("example.com", 80, addresses)
    kept.clear()  # the caller's list is its own: the memo is not changed through it
    assert d._filter_addresses("example.com", 80, addresses)[0] == [ip_address("127.0.0.1")]


def test_the_memo_is_bounded() -> None:
    d = make_dialer()
    for port in range(1, dialer.MEMO_SIZE * 2 + 1):
        d._check_request("127.0.0.1", port)
    assert 0 < len(d._verdicts) <= dialer.MEMO_SIZE
