"""The server's second listening socket: the ``websocket.listen`` listener.

The main port is a ``TLSListener`` the ``Server`` builds itself. With
``websocket.listen`` set, the WebSocket transport also gets a port of its own:
over TLS with ``websocket.cert`` (its own acceptor, the public context current
at each handshake, failures counted and logged like the main port's), or plain
HTTP behind a TLS-terminating load balancer. Either way a port that cannot be
bound is a :class:`ConfigError` naming the key to change.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from fluidity.config.server import ServerConfig
from fluidity.config.values import Address
from fluidity.errors import ConfigError
from fluidity.observe.metrics import Metrics
from fluidity.transport.tlsaccept import FailureLog, TLSListener

log = logging.getLogger("fluidity.server.server")

Listener = TLSListener | asyncio.Server


async def open_websocket_listener(
    config: ServerConfig,
    context: Callable[[], ssl.SSLContext] | None,
    make_link: Callable[[], asyncio.BaseProtocol],
    failures: FailureLog,
    metrics: Metrics,
) -> tuple[Listener, tuple[str, int]]:
    """Listen on ``websocket.listen``: TLS with ``context`` (the current public context),
    or plain HTTP when there is none. Returns the listener and its bound address."""
    listen = config.websocket.listen
    assert listen is not None, "only called with websocket.listen set"
    try:
        if context is not None:
            listener = TLSListener(
                context,
                make_link,
                config.limits.handshake_timeout,
                failures=failures,
                on_failure=metrics.handshake_failed,
            )
            address = await listener.start(listen.host, listen.port)
            opened: Listener = listener
        else:
            opened = await asyncio.get_running_loop().create_server(
                make_link, listen.host, listen.port, backlog=1024
            )
            sockname = opened.sockets[0].getsockname()
            address = (sockname[0], sockname[1])
    except OSError as exc:
        raise cannot_listen("websocket.listen", listen, exc) from exc
    log.info(
        "fluidity server: WebSocket transport on %s:%d at %s (%s)",
        *address,
        config.websocket.path,
        "TLS with websocket.cert"
        if context is not None
        else "plain HTTP, for a TLS-terminating proxy",
    )
    return opened, address


def cannot_listen(key: str, address: Address, exc: OSError) -> ConfigError:
    """The error for a listener that cannot be bound, naming the key to change."""
    where = "--listen or listen: in server.yaml" if key == "listen" else f"{key}: in server.yaml"
    return ConfigError(
        f"{key}: cannot listen on {address}: {exc.strerror or exc}; "
        f"choose another address with {where}"
    )
