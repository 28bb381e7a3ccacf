"""What the doctor's tests share: a CA of their own, and a running server of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fluidity.server.server import Server
from support.harness import make_server_config
from support.secpki import SecurityPKI, make_security_pki


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> SecurityPKI:
    return make_security_pki(tmp_path_factory.mktemp("doctor-pki"))


@pytest.fixture
async def server(spki: SecurityPKI) -> AsyncIterator[int]:
    """A running server of the CA; its port."""
    running = Server(make_server_config(spki.quickstart()))
    await running.start()
    assert running.address is not None
    try:
        yield running.address[1]
    finally:
        await running.shutdown(drain_timeout=1.0)
