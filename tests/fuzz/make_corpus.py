"""Write the seed corpus of the proxy fuzz target: ``python tests/fuzz/make_corpus.py``.

Each seed is a script (see ``proxy_fuzz``) for one kind of conversation the
agent has; a fuzzer mutates them, and CI replays them as they are.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from proxy_fuzz import Step, encode

CORPUS = Path(__file__).parent / "corpus"
AUTH = b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:secret") + b"\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def get(url: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + url + b" HTTP/1.1\r\nHost: example.com\r\n" + extra + b"\r\n"


SEEDS: dict[str, tuple[list[Step], bool]] = {
    "connect_raw": (
        [
            (
                "client",
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03",
            ),
            ("open", 1),
            ("client", b"more tunnel bytes"),
            ("upstream", b"\x16\x03\x03 server hello"),
            ("client_eof", 0),
            ("upstream_eof", 0),
        ],
        False,
    ),
    "connect_refused": (
        [("client", b"CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n"), ("open", 0)],
        False,
    ),
    "connect_malformed": ([("client", b"CONNECT [::1:443 HTTP/1.1\r\nHost: x\r\n\r\n")], False),
    "get_keepalive_two_hosts": (
        [
            ("client", get(b"http://example.com/a?q=1")),
            ("open", 1),
            ("upstream", OK),
            ("client", get(b"http://example.com/b")),
            ("upstream", OK),
            ("client", get(b"http://other.example:8080/c")),
            ("open", 1),
            ("upstream", OK),
            ("client_eof", 0),
        ],
        False,
    ),
    "post_chunked": (
        [
            (
                "client",
                b"POST http://example.com/up HTTP/1.1\r\nHost: example.com\r\n"
                b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            ),
            ("open", 1),
            ("upstream", b"HTTP/1.1 100 Continue\r\n\r\n"),
            ("client", b"5\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"),
            ("upstream", b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ],
        False,
    ),
    "pipelined": (
        [
            ("client", get(b"http://example.com/1") + get(b"http://example.com/2")),
            ("open", 1),
            ("upstream", OK + OK),
        ],
        False,
    ),
    "websocket_upgrade": (
        [
            (
                "client",
                get(
                    b"http://example.com/ws",
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
                ),
            ),
            ("open", 1),
            (
                "upstream",
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\n\x81\x02hi",
            ),
            ("client", b"\x81\x82abcd\x09\x0b"),
            ("lost", 0),
        ],
        False,
    ),
    "close_delimited_response": (
        [
            ("client", get(b"http://example.com/")),
            ("open", 1),
            ("upstream", b"HTTP/1.0 200 OK\r\n\r\nbody until close"),
            ("upstream_eof", 0),
        ],
        False,
    ),
    "retry_after_loss": (
        [
            ("client", get(b"http://example.com/")),
            ("open", 1),
            ("retry", 0),
            ("open", 1),
            ("upstream", OK),
        ],
        False,
    ),
    "retry_after_partial_head": (  # found by atheris: the lost upstream's bytes leaked
        [
            ("client", get(b"http://example.com/")),
            ("open", 1),
            ("upstream", b"HTTP/1.1 200 OK\r\nContent-Le"),
            ("retry", 0),
            ("open", 1),
            ("upstream", OK),
        ],
        False,
    ),
    "auth_required": ([("client", get(b"http://example.com/"))], True),
    "auth_given": (
        [("client", get(b"http://example.com/", AUTH)), ("open", 1), ("upstream", OK)],
        True,
    ),
    "auth_malformed": (
        [("client", get(b"http://example.com/", b"Proxy-Authorization: x\r\n"))],
        True,
    ),
    "garbage": ([("client", b"\x00\x01\x02\xff garbage \r\n\r\n")], False),
    "tls_hello_to_proxy": (
        [("client", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 8)],
        False,
    ),
    "big_head": ([("client", get(b"http://example.com/", b"X: " + b"a" * 70000 + b"\r\n"))], False),
    "slow_head": ([("client", b"GET http://example.com/ HTTP/1.1\r\nHo"), ("retry", 0)], False),
    "http10": (
        [
            ("client", b"GET http://example.com/ HTTP/1.0\r\n\r\n"),
            ("open", 1),
            ("upstream", OK),
        ],
        False,
    ),
    "smuggling": (
        [
            (
                "client",
                b"POST http://example.com/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
        ],
        False,
    ),
    "https_absolute": ([("client", get(b"https://example.com/"))], False),
    # The llhttp reader (protocol/http1request.py): a method it does not know, split
    # across reads; an upgrade the origin declines, with the next request behind it;
    # an upgrade with a body; a HEAD answer that announces a length.
    "extension_method_split": (
        [
            ("client", b"BR"),
            ("client", b"EW http://example.com/pot HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            ("open", 1),
            ("upstream", b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n"),
        ],
        False,
    ),
    "upgrade_declined_then_get": (
        [
            (
                "client",
                get(b"http://example.com/ws", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
                + get(b"http://example.com/next"),
            ),
            ("open", 1),
            ("upstream", b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope"),
            ("upstream", OK),
        ],
        False,
    ),
    "upgrade_with_body": (
        [
            (
                "client",
                b"POST http://example.com/ HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
                b"Connection: Upgrade\r\nContent-Length: 2\r\n\r\nhi",
            )
        ],
        False,
    ),
    "head_with_length": (
        [
            ("client", b"HEAD http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            ("open", 1),
            ("upstream", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
            ("client", get(b"http://example.com/again")),
            ("upstream", OK),
        ],
        False,
    ),
    "origin_form": ([("client", get(b"/not-a-proxy-request"))], False),
}


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for name, (steps, credentials) in SEEDS.items():
        (CORPUS / f"{name}.bin").write_bytes(encode(steps, credentials=credentials))
    print(f"wrote {len(SEEDS)} seeds to {CORPUS}")


if __name__ == "__main__":
    main()
