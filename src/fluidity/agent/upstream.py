"""Reaching the server when only the corporate HTTP proxy may connect out.

:func:`open_tunnel` returns a TCP connection to ``host:port`` (the Fluidity server)
on which the caller starts TLS with ``writer.start_tls(context, server_hostname=...)``.
The way is decided afresh on every call, from the agent.yaml ``upstream_proxy:``
section (:class:`UpstreamProxyConfig`):

- ``url: http://proxy.corp:3128``: always through that proxy;
- ``url: env``: through ``HTTPS_PROXY``/``https_proxy`` unless ``NO_PROXY``/``no_proxy``
  names the host (then, or when no proxy is set, directly), as curl does;
- ``url: pac+http://wpad.corp/proxy.pac`` (or ``pac+https://``, ``pac+file:///...``):
  the ordered list the PAC file answers for ``https://host:port/``, each entry tried
  in turn while the ones before it cannot be reached.

Through a proxy the connection is an HTTP/1.1 ``CONNECT host:port``. The proxy's
answers are parsed by h11, which also tells whether the connection stays open after
a 407 (NTLM and Negotiate need it to); the 407 challenges are answered by
:class:`fluidity.agent.proxyauth.ProxyAuthenticator`. Every failure is an
:class:`UpstreamProxyError` naming the proxy, what it said and what to change;
passwords and tokens never appear in them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import h11

from fluidity.agent.pac import find_proxies
from fluidity.agent.proxyauth import (
    ContextFactory,
    ProxyAuthenticator,
    parse_challenges,
    spnego_context,
)
from fluidity.config.upstream import UpstreamProxyConfig
from fluidity.errors import UpstreamProxyError
from fluidity.protocol.proxyroute import (
    Credentials,
    ProxyChoice,
    parse_proxy_url,
    proxy_from_environment,
)

__all__ = ["PathWriter", "describe_os_error", "open_connection", "open_tunnel", "resolve_route"]

log = logging.getLogger(__name__)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# A 407 body is a short HTML page we discard; this bounds a proxy that sends more.
MAX_ANSWER_BODY = 1024 * 1024
# CONNECT requests one attempt may send: the bare one, then each auth leg.
MAX_REQUESTS = 6


# Both take a timeout parameter rather than relying on the caller's asyncio.timeout:
# it also bounds the PAC fetch in its worker thread, and failures name it.
async def resolve_route(
    config: UpstreamProxyConfig,
    host: str,
    port: int,
    *,
    timeout: float,  # noqa: ASYNC109
) -> tuple[list[ProxyChoice], Credentials]:
    """The ordered ways to try for ``host:port``, and the credentials for the proxies."""
    if config.mode == "pac":
        choices = await find_proxies(config.url.removeprefix("pac+"), host, port, timeout=timeout)
        return choices, config.credentials()
    if config.mode == "env":
        choices, from_url = proxy_from_environment(host, port, os.environ)
        return choices, config.credentials(from_url)
    proxy, from_url = parse_proxy_url(config.url, "upstream_proxy.url")
    return [proxy], config.credentials(from_url)


async def open_tunnel(
    config: UpstreamProxyConfig,
    host: str,
    port: int,
    *,
    timeout: float,  # noqa: ASYNC109
    context_factory: ContextFactory = spnego_context,
) -> Streams:
    """A TCP connection to ``host:port``, through the proxy when the route says so.

    Start TLS on the result with ``await writer.start_tls(ctx, server_hostname=host)``.
    The whole attempt (PAC, connects, every 407 leg) is bounded by ``timeout``
    seconds. ``context_factory`` builds NTLM/Negotiate contexts (tests pass a fake).
    Raises :class:`UpstreamProxyError`, or :class:`ConfigError` when the
    ``password_env`` variable is missing or ``HTTPS_PROXY`` is malformed.
    """
    progress = _Progress(f"finding the route to {_authority(host, port)}")
    try:
        async with asyncio.timeout(timeout):
            choices, credentials = await resolve_route(config, host, port, timeout=timeout)
            log.debug("route to %s: %s", _authority(host, port), "; ".join(map(str, choices)))
            return await _open_first(choices, credentials, host, port, context_factory, progress)
    except TimeoutError:
        raise UpstreamProxyError(
            f"timed out after {timeout:g} s {progress.phase}; check that the proxy is "
            "reachable from this network, or raise the connect timeout",
            status=504,
        ) from None


@dataclass
class _Progress:
    """What the attempt is doing now, for the timeout message."""

    phase: str


class _Unreachable(Exception):
    """Internal: this way could not even be connected to; the next one may work."""


async def _open_first(
    choices: list[ProxyChoice],
    credentials: Credentials,
    host: str,
    port: int,
    context_factory: ContextFactory,
    progress: _Progress,
) -> Streams:
    """Try each way in order. Only an unreachable way moves on: a proxy that answers
    (even with a refusal) has spoken for the network, as browsers treat it."""
    failures: list[str] = []
    for choice in choices:
        if choice.kind not in ("direct", "http"):
            failures.append(f"{choice} (only PROXY/HTTP proxies and DIRECT are supported)")
            continue
        target = (choice.host, choice.port) if choice.kind == "http" else (host, port)
        progress.phase = f"connecting to {choice}"
        try:
            reader, writer = await _dial(*target)
        except _Unreachable as exc:
            failures.append(f"{choice} ({exc})")
            continue
        if choice.kind == "direct":
            return reader, writer
        progress.phase = f"waiting for proxy {_authority(*target)} to answer CONNECT"
        exchange = _ConnectExchange(choice, reader, writer, _authority(host, port))
        return await exchange.run(ProxyAuthenticator(exchange.proxy, credentials, context_factory))
    raise UpstreamProxyError(
        f"no way to reach {_authority(host, port)}: {'; '.join(failures)}; "
        "check the upstream_proxy setting (or the PAC file) and the network"
    )


async def _dial(host: str, port: int) -> Streams:
    try:
        return await open_connection(host, port)
    except OSError as exc:
        raise _Unreachable(describe_os_error(exc)) from None


class PathWriter(asyncio.StreamWriter):
    """A ``StreamWriter`` whose connection may be handed over to another protocol.

    ``StreamWriter.__del__`` closes the connection of a writer that is garbage
    collected while it is open (Python 3.11.3 and later): right for a forgotten
    stream, wrong once :func:`fluidity.agent.path.attach` has given the connection to a
    protocol that owns it from then on. ``handed_over`` marks that moment.
    """

    handed_over = False

    def __del__(self) -> None:
        parent = getattr(asyncio.StreamWriter, "__del__", None)
        if parent is not None and not self.handed_over:
            parent(self)


async def open_connection(host: str, port: int) -> Streams:
    """``asyncio.open_connection``, with a :class:`PathWriter`. Raises ``OSError``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, PathWriter(transport, protocol, reader, loop)


def describe_os_error(exc: OSError) -> str:
    """A short reason: "Connection refused", not asyncio's "Connect call failed (...)"."""
    if isinstance(exc, socket.gaierror):
        return f"the name does not resolve: {exc.strerror}"
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class _ConnectExchange:
    """One CONNECT through one proxy, over one connection or, if the proxy closes
    it after the bare 407, a second one."""

    def __init__(
        self,
        proxy: ProxyChoice,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: str,
    ) -> None:
        self.proxy = _authority(proxy.host, proxy.port)
        self._address = (proxy.host, proxy.port)
        self._reader, self._writer = reader, writer
        self._target = target
        self._http = h11.Connection(h11.CLIENT)

    async def run(self, auth: ProxyAuthenticator) -> Streams:
        """Send CONNECT, answer 407s, return the streams once the proxy says 200."""
        try:
            return await self._run(auth)
        except BaseException:
            self._writer.close()
            raise

    async def _run(self, auth: ProxyAuthenticator) -> Streams:
        authorization: str | None = None
        for _ in range(MAX_REQUESTS):
            response = await self._request(authorization)
            challenges = parse_challenges(_header_values(response, b"proxy-authenticate"))
            if 200 <= response.status_code < 300:
                auth.accepted(challenges)
                return self._reader, self._writer
            if response.status_code != 407:
                raise UpstreamProxyError(self._refusal(response))
            authorization = auth.respond(challenges)
            log.debug("proxy %s asked for credentials; answering with %s", self.proxy, auth.scheme)
            if not self._reusable():
                await self._redial(auth)
        raise UpstreamProxyError(
            f"proxy {self.proxy} still answered 407 after {MAX_REQUESTS} CONNECT requests"
        )

    async def _request(self, authorization: str | None) -> h11.Response:
        headers = [("Host", self._target), ("Proxy-Connection", "keep-alive")]
        if authorization is not None:
            headers.append(("Proxy-Authorization", authorization))
        request = h11.Request(method="CONNECT", target=self._target, headers=headers)
        try:
            self._writer.write(self._http.send(request) + self._http.send(h11.EndOfMessage()))
            await self._writer.drain()
            return await self._read_answer()
        except OSError as exc:
            raise UpstreamProxyError(
                f"lost the connection to proxy {self.proxy} during CONNECT {self._target}: "
                f"{describe_os_error(exc)}"
            ) from None
        except h11.RemoteProtocolError as exc:
            raise UpstreamProxyError(
                f"proxy {self.proxy} sent a malformed answer to CONNECT: {exc}"
            ) from None

    async def _read_answer(self) -> h11.Response:
        """The final answer to our CONNECT; a non-2xx answer's body is read and dropped."""
        response: h11.Response | None = None
        body = 0
        while body <= MAX_ANSWER_BODY:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                self._http.receive_data(await self._read_more(head=response is None))
            elif isinstance(event, h11.Response):
                response = event
                if 200 <= event.status_code < 300:
                    return event  # the tunnel starts right after the head
            elif isinstance(event, h11.Data):
                body += len(event.data)
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                return response
        raise UpstreamProxyError(f"proxy {self.proxy} sent a 407 body over {MAX_ANSWER_BODY} bytes")

    async def _read_more(self, *, head: bool) -> bytes:
        """Read exactly one head (so no tunnel byte is taken by mistake), or body bytes."""
        if not head:
            return await self._reader.read(65536)
        try:
            return await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise UpstreamProxyError(
                f"proxy {self.proxy} closed the connection without answering CONNECT {self._target}"
            ) from None
        except asyncio.LimitOverrunError:
            raise UpstreamProxyError(
                f"proxy {self.proxy} answered CONNECT with an oversized head"
            ) from None

    def _reusable(self) -> bool:
        if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
            self._http.start_next_cycle()
            return True
        return False

    async def _redial(self, auth: ProxyAuthenticator) -> None:
        """The proxy closed after its 407: fine before a handshake, fatal inside one."""
        if auth.continues_handshake:
            raise UpstreamProxyError(
                f"proxy {self.proxy} closed the connection in the middle of the {auth.scheme} "
                "handshake, which needs one keep-alive connection; ask its administrators "
                "to keep connections open, or use Basic"
            )
        self._writer.close()
        try:
            self._reader, self._writer = await _dial(*self._address)
        except _Unreachable as exc:
            raise UpstreamProxyError(f"cannot reconnect to proxy {self.proxy}: {exc}") from None
        self._http = h11.Connection(h11.CLIENT)

    def _refusal(self, response: h11.Response) -> str:
        status = f"{response.status_code} {response.reason.decode('latin-1')}".strip()
        said = f"proxy {self.proxy} answered {status} to CONNECT {self._target}"
        if response.status_code == 403:
            return f"{said}: its policy refuses this destination; ask to allow it, or use port 443"
        if response.status_code in (502, 503, 504):
            return f"{said}: it could not reach the server; check the server is up"
        return f"{said}: it does not tunnel there; check upstream_proxy.url"


def _header_values(response: h11.Response, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in response.headers if key == name]


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
