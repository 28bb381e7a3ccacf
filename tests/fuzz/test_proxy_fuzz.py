"""The proxy fuzz target in CI: the committed seed corpus, then hypothesis-made scripts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_fuzz import Step, encode, run

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.bin"))


def test_the_seed_corpus_is_there() -> None:
    assert len(CORPUS) >= 15


@pytest.mark.parametrize("seed", CORPUS, ids=[p.stem for p in CORPUS])
def test_every_seed_runs_sanely(seed: Path) -> None:
    checker = run(seed.read_bytes())
    assert checker.client_bytes > 0, "every seed gets an answer to its client"


def test_the_checker_catches_an_insane_sequence() -> None:
    from proxy_fuzz import Checker

    from fluidity.protocol.proxy import ClientSession, CloseClient, SendClient

    with pytest.raises(AssertionError, match="after CloseClient"):
        Checker().check(
            ClientSession(),
            [SendClient(b"HTTP/1.1 200 OK\r\n\r\n"), CloseClient(), SendClient(b"x")],
        )


def test_a_replayed_request_gets_only_the_new_upstreams_response() -> None:
    """Found by fuzzing: a partial response head from the lost upstream was glued in front
    of the replayed request's response."""
    from fluidity.protocol.proxy import ClientSession, SendClient

    session = ClientSession()
    session.receive_client(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
    session.upstream_opened()
    session.receive_upstream(b"HTTP/1.1 200 OK\r\nContent-Le")  # then the stream dies
    session.retry_upstream()
    session.upstream_opened()
    session.events()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    session.receive_upstream(response)
    assert [e for e in session.events() if isinstance(e, SendClient)] == [SendClient(response)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_any_bytes_as_a_script(data: bytes) -> None:
    run(data)


METHODS = st.sampled_from([b"GET", b"POST", b"CONNECT", b"PUT", b"HEAD", b"OPTIONS", b"G\x00T"])
TARGETS = st.sampled_from(
    [
        b"http://example.com/",
        b"http://example.com:8080/p?q=1",
        b"example.com:443",
        b"[::1]:443",
        b"http://[::1]/",
        b"http://user@example.com/",
        b"/local",
        b"*",
        b"https://example.com/",
        b"ftp://example.com/",
        b"example.com",
        b"http://127.1:0/",
    ]
)
HEADERS = st.lists(
    st.sampled_from(
        [
            b"Host: example.com\r\n",
            b"Content-Length: 3\r\n",
            b"Content-Length: -1\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b"Connection: close\r\n",
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
            b"Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n",
            b"Expect: 100-continue\r\n",
            b"Bad Header\r\n",
            b" folded\r\n",
        ]
    ),
    max_size=6,
)
UPSTREAM = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"garbage",
        b"",
    ]
)


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """Scripts built from near-valid requests and responses: deeper than random bytes."""
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 4))):
        head = draw(METHODS) + b" " + draw(TARGETS) + b" HTTP/1.1\r\n" + b"".join(draw(HEADERS))
        body = draw(st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n"]))
        request = head + b"\r\n" + body
        cut = draw(st.integers(0, len(request)))
        steps += [("client", request[:cut]), ("client", request[cut:])]
        steps += [("open", draw(st.integers(0, 3)))]
        steps += [("upstream", draw(UPSTREAM))]
        steps += [
            draw(
                st.sampled_from(
                    [
                        ("client_eof", 0),
                        ("upstream_eof", 0),
                        ("lost", 0),
                        ("retry", 0),
                        ("client", b"x"),
                    ]
                )
            )
        ]
    return encode(steps, credentials=draw(st.booleans()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_near_valid_conversations(script: bytes) -> None:
    run(script)
