"""One read buffer per thread, lent for one read at a time."""

from __future__ import annotations

import threading

from fluidity.transport import readbuffer


def test_a_buffer_given_back_is_the_next_one_lent() -> None:
    first = readbuffer.lend()
    readbuffer.give_back(first)
    again = readbuffer.lend()
    assert again is first and len(again) == readbuffer.READ_BUFFER
    readbuffer.give_back(again)


def test_a_read_inside_a_read_gets_a_buffer_of_its_own() -> None:
    outer = readbuffer.lend()
    inner = readbuffer.lend()  # a protocol delivering to another synchronously
    assert inner is not outer
    inner[:5] = b"inner"
    outer[:5] = b"outer"
    assert bytes(inner[:5]) == b"inner"
    readbuffer.give_back(inner)
    readbuffer.give_back(outer)


def test_each_thread_has_its_own() -> None:
    here = readbuffer.lend()
    readbuffer.give_back(here)
    there: list[memoryview] = []
    worker = threading.Thread(target=lambda: there.append(readbuffer.lend()))
    worker.start()
    worker.join(timeout=10)
    assert there and there[0] is not here
