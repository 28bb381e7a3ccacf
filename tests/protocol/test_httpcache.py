"""How long a fetched PAC file stays fresh, from its caching headers. No clock: ``now`` is given."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from fluidity.protocol.httpcache import freshness_lifetime

NOW = 1_800_000_000.0


def lifetime(
    cache_control: str | None = None, expires: str | None = None, date: str | None = None
) -> float:
    return freshness_lifetime(
        cache_control=cache_control, expires=expires, date=date, now=NOW, default=300, cap=86400
    )


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def test_no_headers_give_the_default() -> None:
    assert lifetime() == 300


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("max-age=60", 60),
        ("public, max-age=3600", 3600),
        ('max-age="120"', 120),
        ("Max-Age=0", 0),
        ("max-age=99999999", 86400),  # capped
        ("max-age=-5", 0),  # unreadable: stale
        ("max-age=soon", 0),
        ("no-store", 0),
        ("no-cache", 0),
        ("max-age=600, no-store", 0),
        ("private", 300),  # says nothing about time
    ],
)
def test_cache_control(header: str, seconds: float) -> None:
    assert lifetime(header) == seconds


def test_max_age_wins_over_expires() -> None:
    assert lifetime("max-age=30", http_date(NOW + 600)) == 30


def test_expires_counts_from_the_date_header() -> None:
    # The server's clock is 1000 s behind ours: the difference is what counts.
    assert lifetime(expires=http_date(NOW - 1000 + 120), date=http_date(NOW - 1000)) == 120


def test_expires_without_a_date_counts_from_now() -> None:
    assert lifetime(expires=http_date(NOW + 90)) == 90


@pytest.mark.parametrize("expires", ["0", "yesterday", http_date(NOW - 60)])
def test_an_unreadable_or_past_expires_is_stale(expires: str) -> None:
    assert lifetime(expires=expires) == 0


def test_a_default_over_the_cap_is_capped() -> None:
    got = freshness_lifetime(
        cache_control=None, expires=None, date=None, now=NOW, default=600, cap=100
    )
    assert got == 100
