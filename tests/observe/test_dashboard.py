"""The dashboard's rules, without a socket: which hosts, actions and credentials pass."""

from __future__ import annotations

import base64

import pytest

from fluidity.observe import dashboard
from fluidity.observe.dashboard import (
    ACTION_HEADER,
    DashboardRefused,
    basic_matches,
    check_action,
    check_credentials,
    check_host,
)

PAGE_BUDGET = 16 * 1024  # "a few KiB of inline JS/CSS and SVG"


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "10.1.2.3"])
def test_an_address_or_localhost_is_a_dashboard_host(host: str) -> None:
    check_host([("Host", host)])


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "localhost.evil.example"])
def test_a_name_is_refused_as_dns_rebinding(host: str) -> None:
    with pytest.raises(DashboardRefused) as refused:
        check_host([("Host", host)])
    assert refused.value.status == 421


def test_the_page_s_own_post_passes_and_others_do_not() -> None:
    own = [("Host", "127.0.0.1:8080"), ("Origin", "http://127.0.0.1:8080"), (ACTION_HEADER, "1")]
    check_action("POST", [*own, ("Sec-Fetch-Site", "same-origin")])
    check_action("POST", own)  # an older browser without Sec-Fetch-*
    for method, headers in [
        ("GET", own),
        ("POST", own[:2]),
        ("POST", [*own, ("Sec-Fetch-Site", "same-site")]),
        ("POST", [own[0], ("Origin", "http://127.0.0.1:9999"), own[2]]),
        ("POST", [own[0], ("Origin", "null"), own[2]]),
    ]:
        with pytest.raises(DashboardRefused):
            check_action(method, headers)


def test_basic_credentials_compare_exactly() -> None:
    token = base64.b64encode(b"ann:s3cret").decode()
    assert basic_matches(f"Basic {token}", ("ann", "s3cret"))
    assert basic_matches(f"basic  {token}", ("ann", "s3cret"))
    assert not basic_matches(f"Basic {token}", ("ann", "s3cre"))
    assert not basic_matches(f"Bearer {token}", ("ann", "s3cret"))
    assert not basic_matches("Basic !!!", ("ann", "s3cret"))
    assert not basic_matches(None, ("ann", "s3cret"))
    check_credentials([], None, proxy_authenticated=False)
    check_credentials([], ("ann", "s3cret"), proxy_authenticated=True)
    with pytest.raises(DashboardRefused) as refused:
        check_credentials([], ("ann", "s3cret"), proxy_authenticated=False)
    assert refused.value.status == 401
    assert ("WWW-Authenticate", 'Basic realm="fluidity"') in dashboard.refusal(
        refused.value
    ).headers


def test_the_page_is_small_and_ships_with_the_package() -> None:
    page = dashboard.page()
    assert page.content_type == "text/html; charset=utf-8"
    assert page.body.startswith(b"<!doctype html>")
    assert len(page.body) < PAGE_BUDGET
    print(f"dashboard.html: {len(page.body)} bytes")


def test_every_fix_is_one_plain_sentence_or_two() -> None:
    for kind, fix in dashboard.FIXES.items():
        assert fix.endswith("."), kind
        assert len(fix) < 200, kind
