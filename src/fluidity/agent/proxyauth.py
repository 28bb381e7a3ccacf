"""Authenticating to the corporate proxy: the 407 dance, without I/O.

A proxy that wants credentials answers ``CONNECT`` with ``407`` and one
``Proxy-Authenticate`` challenge per scheme it accepts. We pick the strongest scheme
it offers that we can do (Negotiate, then NTLM, then Basic) and answer with
``Proxy-Authorization``:

- **Basic** is one leg: ``user:password`` in base64. A second 407 means refused.
- **NTLM** is three messages on one connection: we send NEGOTIATE, the proxy's 407
  carries a CHALLENGE, we answer AUTHENTICATE, and the proxy answers 200 or 407.
  The proxy ties the challenge to the TCP connection, so every leg after the first
  must go over the connection that carried the challenge (keep-alive).
- **Negotiate** (SPNEGO, RFC 4559) is Kerberos when the user has a ticket (no
  password needed) or NTLM inside SPNEGO when a password is given; usually one leg,
  possibly more, with the same keep-alive rule. The final 200 may carry the
  proxy's token, which completes mutual authentication.

NTLM and Negotiate tokens come from ``pyspnego`` (which uses GSSAPI or SSPI for
Kerberos where they are installed), behind the small :class:`AuthContext` protocol
so that tests can drive the exchange with a fake context. When a scheme cannot even
start here (no Kerberos ticket, no password) the next offered scheme is tried; when
the proxy refuses credentials, that is final: guessing on would lock accounts.

Passwords and tokens never appear in messages, logs or reprs.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from fluidity.errors import UpstreamProxyError
from fluidity.protocol.proxyroute import Credentials

SCHEME_NAMES = {"negotiate": "Negotiate", "ntlm": "NTLM", "basic": "Basic"}
PREFERENCE = ("negotiate", "ntlm", "basic")
# Legs after the first that one CONNECT may take; NTLM needs 1, Kerberos 0 or 1.
MAX_LEGS = 4


def _spnego_errors() -> tuple[type[Exception], ...]:
    """What pyspnego raises when a context cannot be built or stepped: its own errors,
    ImportError when GSSAPI is missing for Kerberos, ValueError for a bad token.

    pyspnego is imported on first need, like in ``spnego_context``: it loads the
    ``cryptography`` bindings, about 15 MB of resident memory that an agent spends
    only when a proxy asks for NTLM or Negotiate (an ``except`` clause evaluates
    this only when an exception is on its way).
    """
    import spnego.exceptions

    return (
        spnego.exceptions.SpnegoError,
        spnego.exceptions.FeatureMissingError,
        ImportError,
        ValueError,
    )


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``Proxy-Authenticate`` challenge: the scheme and its unparsed data."""

    scheme: str
    data: str = ""

    @property
    def key(self) -> str:
        return self.scheme.lower()

    def token(self) -> bytes | None:
        """The base64 token68 this challenge carries, or None (empty, or auth-params)."""
        if not self.data:
            return None
        try:
            return base64.b64decode(self.data, validate=True)
        except binascii.Error:
            return None


class AuthContext(Protocol):
    """The part of a ``spnego.ContextProxy`` the exchange uses."""

    @property
    def complete(self) -> bool: ...

    def step(self, in_token: bytes | None = None) -> bytes | None: ...


class ContextFactory(Protocol):
    """Builds the client context for ``protocol`` ("ntlm" or "negotiate")."""

    def __call__(
        self, username: str | None, password: str | None, *, hostname: str, protocol: str
    ) -> AuthContext: ...


def spnego_context(
    username: str | None, password: str | None, *, hostname: str, protocol: str
) -> AuthContext:
    """A pyspnego client context for the proxy's ``HTTP/hostname`` service."""
    import spnego  # on first need: see _spnego_errors

    context: AuthContext = spnego.client(
        username, password, hostname=hostname, service="HTTP", protocol=protocol
    )
    return context


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``Proxy-Authenticate`` header values (RFC 9110 §11.6.1) into challenges.

    One header may hold several challenges separated by commas, and a challenge's
    auth-params are comma-separated too: an element whose first word has no ``=``
    starts a new challenge, any other element belongs to the one before it.
    """
    challenges: list[Challenge] = []
    for value in values:
        for element in _split_commas(value):
            first, _, rest = element.partition(" ")
            if "=" not in first:
                challenges.append(Challenge(first, rest.strip()))
            elif challenges:
                last = challenges[-1]
                data = f"{last.data}, {element}" if last.data else element
                challenges[-1] = Challenge(last.scheme, data)
    return challenges


def _split_commas(value: str) -> list[str]:
    """Split on commas outside quoted strings; drop empty elements."""
    elements: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append("".join(current))
            current = []
            continue
        current.append(char)
    elements.append("".join(current))
    return [" ".join(e.split()) for e in elements if e.strip()]


class _CannotStart(Exception):
    """Internal: this scheme cannot begin here (no password, no Kerberos ticket...)."""


class ProxyAuthenticator:
    """The client side of the 407 dance for one CONNECT through one proxy.

    Call :meth:`respond` with the challenges of each 407; it returns the
    ``Proxy-Authorization`` value for the next request, or raises
    :class:`UpstreamProxyError` when there is nothing left to try. After a 200, call
    :meth:`accepted` with its challenges (Negotiate's mutual authentication).
    :attr:`continues_handshake` tells the caller that the next request must go over
    the connection that carried the last 407.
    """

    def __init__(
        self,
        proxy: str,
        credentials: Credentials,
        context_factory: ContextFactory = spnego_context,
    ) -> None:
        self.proxy = proxy
        self.scheme: str | None = None
        self.continues_handshake = False
        self._username = credentials.username
        self._password = credentials.password
        self._factory = context_factory
        self._context: AuthContext | None = None
        self._legs = 0
        self._offered: list[Challenge] = []

    def __repr__(self) -> str:
        return f"<ProxyAuthenticator {self.proxy} scheme={self.scheme} user={self._username}>"

    def respond(self, challenges: list[Challenge]) -> str:
        """The ``Proxy-Authorization`` answer to a 407 carrying ``challenges``."""
        if self.scheme is None:
            return self._start(challenges)
        return self._continue(challenges)

    def accepted(self, challenges: list[Challenge]) -> None:
        """The proxy answered 200: feed Negotiate's final token, if any, to the context."""
        if self._context is None or self._context.complete:
            return
        final = next((c.token() for c in challenges if c.key == self.scheme), None)
        if final is None:
            return
        try:
            self._context.step(final)
        except _spnego_errors() as exc:
            raise UpstreamProxyError(
                f"proxy {self.proxy} accepted CONNECT but its {self._name} answer failed mutual "
                f"authentication ({type(exc).__name__}): it may not be the proxy it claims"
            ) from None

    # -- the first leg ------------------------------------------------------------

    def _start(self, challenges: list[Challenge]) -> str:
        self._offered = challenges
        candidates = [c for key in PREFERENCE for c in challenges if c.key == key]
        if not candidates:
            raise UpstreamProxyError(
                f"{self._preamble(challenges)}; Fluidity speaks Negotiate, NTLM and Basic: "
                "ask the proxy's administrators for one of them, or route around the proxy"
            )
        reasons: list[str] = []
        for challenge in candidates:
            try:
                return self._begin(challenge.key)
            except _CannotStart as exc:
                reasons.append(str(exc))
        raise UpstreamProxyError(f"{self._preamble(challenges)}; {'; '.join(reasons)}")

    def _begin(self, key: str) -> str:
        self.scheme = key
        if key == "basic":
            return self._basic()
        try:
            self._context = self._factory(
                self._username, self._password, hostname=self._host, protocol=key
            )
            token = self._context.step(None)
        except _spnego_errors() as exc:
            self.scheme = self._context = None
            raise _CannotStart(self._cannot_start(key, exc)) from None
        if token is None:
            self.scheme = self._context = None
            raise _CannotStart(f"{SCHEME_NAMES[key]} produced no token")
        return f"{SCHEME_NAMES[key]} {base64.b64encode(token).decode('ascii')}"

    def _basic(self) -> str:
        if self._username is None or self._password is None:
            self.scheme = None
            raise _CannotStart(
                "Basic needs upstream_proxy.username and upstream_proxy.password "
                "(or password_env), and none are configured"
            )
        secret = f"{self._username}:{self._password}".encode()
        return f"Basic {base64.b64encode(secret).decode('ascii')}"

    def _cannot_start(self, key: str, exc: BaseException) -> str:
        name = SCHEME_NAMES[key]
        if self._password is None:
            hint = "set upstream_proxy.username and password, or get a Kerberos ticket (kinit)"
            if isinstance(exc, ImportError):
                hint = "install pyspnego[kerberos] for Kerberos, or set a username and password"
            return f"{name} could not start without a password ({hint})"
        return f"{name} could not start ({type(exc).__name__}: {exc})"

    # -- the legs after it -----------------------------------------------------------

    def _continue(self, challenges: list[Challenge]) -> str:
        self._legs += 1
        challenge = next((c for c in challenges if c.key == self.scheme), None)
        token = challenge.token() if challenge is not None else None
        context = self._context
        if token is None or context is None or context.complete or self._legs > MAX_LEGS:
            raise UpstreamProxyError(self._refused(challenges))
        try:
            answer = context.step(token)
        except _spnego_errors() as exc:
            raise UpstreamProxyError(
                f"{self._preamble(challenges)}; the {self._name} handshake failed "
                f"({type(exc).__name__}: {exc})"
            ) from None
        if answer is None:
            raise UpstreamProxyError(self._refused(challenges))
        self.continues_handshake = True
        return f"{self._name} {base64.b64encode(answer).decode('ascii')}"

    # -- messages -------------------------------------------------------------------

    @property
    def _host(self) -> str:
        return self.proxy.rsplit(":", 1)[0].strip("[]")

    @property
    def _name(self) -> str:
        return SCHEME_NAMES.get(self.scheme or "", self.scheme or "")

    def _preamble(self, challenges: list[Challenge]) -> str:
        """Names the proxy and the schemes its first 407 offered."""
        first = self._offered or challenges
        offered = ", ".join(dict.fromkeys(c.scheme for c in first)) or "no scheme"
        return f"proxy {self.proxy} answered 407 to CONNECT; it offers {offered}"

    def _refused(self, challenges: list[Challenge]) -> str:
        if self._username is not None:
            who = f"credentials for {self._username} were refused"
            fix = "check upstream_proxy.username and password"
        else:
            who = "the Kerberos credentials of the current user were refused"
            fix = "check the ticket (klist) or set upstream_proxy.username and password"
        return f"{self._preamble(challenges)}; {who} ({self._name}): {fix}"
