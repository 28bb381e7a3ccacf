"""Fuzz target for the agent's request parsing: a ``ClientSession`` driven by a byte script.

``run(data)`` reads ``data`` as a script of driver actions -- client bytes,
client EOF, the fate of an upstream being opened, upstream bytes, a lost
upstream, a head timeout, a retry -- makes only calls the session's contract
allows at that moment, and checks after every call that the events it emitted
make sense (``Checker``). Any exception, or any insane event sequence, is a bug.

The script format (``encode`` builds one from readable steps)::

    byte 0          bit 0: the session requires proxy credentials (alice:secret)
    then, repeated: one op byte (op % 8), then its operands
      0, 1, 2       client bytes: a length byte n, then n + 1 bytes
      3             client EOF
      4             answer a pending open: operand % 4 == 0 -> upstream_failed(502)
      5             upstream bytes: a length byte n, then n + 1 bytes
      6             operand odd: upstream EOF; even: upstream_lost()
      7             retry_upstream() if replayable, else head_timed_out()

Run it under atheris (not a dependency) for coverage-guided fuzzing::

    pip install atheris
    python tests/fuzz/proxy_fuzz.py tests/fuzz/corpus -max_total_time=600

The committed seed corpus (``tests/fuzz/corpus/*.bin``, written by
``make_corpus.py``) is replayed in CI by ``test_proxy_fuzz.py``, alongside
hypothesis-generated scripts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fluidity.protocol.proxy import (
    ClientSession,
    CloseClient,
    CloseUpstream,
    EndClient,
    EndUpstream,
    OpenUpstream,
    ProxyEvent,
    SendClient,
    SendUpstream,
    State,
)

MAX_STEPS = 400
CREDENTIALS = ("alice", "secret")


class Script:
    """Reads operands from the fuzz input; past its end every read gives zeros."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def done(self) -> bool:
        return self._at >= len(self._data)

    def byte(self) -> int:
        value = self._data[self._at] if self._at < len(self._data) else 0
        self._at += 1
        return value

    def chunk(self) -> bytes:
        size = self.byte() + 1
        piece = self._data[self._at : self._at + size]
        self._at += size
        return piece


@dataclass
class Checker:
    """A model of what the driver holds, checked against every event the session emits."""

    upstream: str | None = None  # None, "opening" or "open"
    end_sent: bool = False
    upstream_eof: bool = False
    closed: bool = False
    client_bytes: int = 0
    fed: bytes = b""  # what the current upstream sent, as the harness fed it
    relayed: int = 0  # how much of ``fed`` has reached the client so far

    def upstream_sent(self, data: bytes) -> None:
        self.fed += data

    def check(self, session: ClientSession, events: Iterable[ProxyEvent]) -> None:
        for event in events:
            assert not self.closed, f"{event!r} after CloseClient"
            self._one(event)
        assert (session.state is State.CLOSED) == self.closed, session.state

    def _one(self, event: ProxyEvent) -> None:
        match event:
            case OpenUpstream(host, port, kind):
                assert self.upstream is None, f"OpenUpstream while one is {self.upstream}"
                assert host and not any(c.isspace() for c in host), repr(host)
                assert 1 <= port <= 65535 and kind in ("connect", "forward")
                self.upstream, self.end_sent, self.upstream_eof = "opening", False, False
                self.fed, self.relayed = b"", 0
            case SendUpstream(data):
                assert self.upstream == "open" and data, "SendUpstream without an open upstream"
                assert not self.end_sent, "SendUpstream after EndUpstream"
            case EndUpstream():
                assert self.upstream == "open" and not self.end_sent
                self.end_sent = True
            case CloseUpstream():
                assert self.upstream is not None, "CloseUpstream without an upstream"
                self.upstream = None
            case SendClient(data):
                assert data, "an empty SendClient"
                if self.client_bytes == 0:
                    assert data.startswith(b"HTTP/"), data[:40]
                self.client_bytes += len(data)
                self._relayed_in_order(data)
            case EndClient():
                assert self.upstream == "open" and self.upstream_eof
            case CloseClient():
                ended = self.end_sent and self.upstream_eof
                assert self.upstream is None or ended, f"upstream {self.upstream} left open"
                self.closed = True
                self.upstream = None

    def _relayed_in_order(self, data: bytes) -> None:
        """What goes to the client from an upstream is that upstream's bytes, in order,
        with nothing added, lost or glued in -- except the agent's own answers."""
        if self.upstream is None or _agent_made(data):
            return
        expected = self.fed[self.relayed : self.relayed + len(data)]
        assert data == expected, f"relayed {data[:60]!r}, the upstream sent {expected[:60]!r}"
        self.relayed += len(data)


def _agent_made(data: bytes) -> bool:
    """The agent's own answers: CONNECT established, or an error it wrote itself."""
    if data == b"HTTP/1.1 200 Connection established\r\n\r\n":
        return True
    return data.startswith(b"HTTP/1.1 ") and b"Content-Type: text/plain; charset=utf-8\r\n" in data


def run(data: bytes) -> Checker:
    """Drive one session with the script ``data``; raise AssertionError if anything is off."""
    script = Script(data)
    credentials = CREDENTIALS if script.byte() & 1 else None
    session = ClientSession(credentials=credentials, local_paths={})
    checker = Checker()
    client_eof = False
    for _ in range(MAX_STEPS):
        if script.done:
            break
        op = script.byte() % 8
        # Operands are read whether or not the action is legal now, so a script
        # always decodes the same way.
        operand: bytes | int = script.chunk() if op in (0, 1, 2, 5) else script.byte()
        # An empty chunk (the script ran out) would mean EOF: EOFs have their own ops.
        if op <= 2 and not client_eof and operand:
            assert isinstance(operand, bytes)
            session.receive_client(operand)
        elif op == 3 and not client_eof:
            client_eof = True
            session.receive_client(b"")
        elif op == 4:
            _answer_open(session, checker, int(operand))
        elif op == 5 and checker.upstream == "open" and not checker.upstream_eof and operand:
            assert isinstance(operand, bytes)
            checker.upstream_sent(operand)
            session.receive_upstream(operand)
        elif op == 6:
            _end_upstream(session, checker, int(operand))
        elif op == 7:
            _retry_or_time_out(session, checker)
        checker.check(session, session.events())
    return checker


def _answer_open(session: ClientSession, checker: Checker, operand: int) -> None:
    if session.state is not State.OPENING:
        return
    if operand % 4 == 0:
        checker.upstream = None
        session.upstream_failed(502, "fuzz: the target refused")
    else:
        checker.upstream = "open"
        session.upstream_opened()


def _end_upstream(session: ClientSession, checker: Checker, operand: int) -> None:
    if checker.upstream != "open" or checker.upstream_eof:
        return
    if operand % 2:
        checker.upstream_eof = True
        session.receive_upstream(b"")
    else:
        checker.upstream = None
        session.upstream_lost("fuzz: the stream broke")


def _retry_or_time_out(session: ClientSession, checker: Checker) -> None:
    if session.state is State.FORWARDING and session.replayable_request() is not None:
        checker.upstream = None  # the driver saw the stream die
        session.retry_upstream()
    else:
        session.head_timed_out()


# -- building scripts from readable steps -------------------------------------------------

Step = tuple[str, bytes | int]


def encode(steps: Sequence[Step], *, credentials: bool = False) -> bytes:
    """A script from steps: ("client", bytes), ("client_eof", 0), ("open", 1 | 0 for failed),
    ("upstream", bytes), ("upstream_eof", 0), ("lost", 0), ("retry", 0)."""
    out = bytearray([1 if credentials else 0])
    for name, value in steps:
        if name in ("client", "upstream"):
            assert isinstance(value, bytes)
            for start in range(0, max(len(value), 1), 256):
                piece = value[start : start + 256]
                if piece:
                    out += bytes([0 if name == "client" else 5, len(piece) - 1]) + piece
        else:
            op, operand = {
                "client_eof": (3, 0),
                "open": (4, 1 if value else 0),
                "upstream_eof": (6, 1),
                "lost": (6, 0),
                "retry": (7, 0),
            }[name]
            out += bytes([op, operand])
    return bytes(out)


def main(argv: list[str]) -> None:  # pragma: no cover - needs atheris
    import atheris  # type: ignore[import-not-found]

    atheris.instrument_all()  # coverage feedback from every loaded module (h11, fluidity)
    atheris.Setup(argv, run)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv)
