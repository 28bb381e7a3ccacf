"""The one exception tree of Fluidity.

Foreign exceptions (``OSError``, ``ssl.SSLError``, ``h2.exceptions.*``,
``h11.ProtocolError``, ``yaml.YAMLError``) are translated into these at the
I/O boundary and nowhere else::

    FluidityError
    ├── ConfigError            a config file or value is wrong (exit status 2)
    ├── CertificateError       the private CA tool cannot do what was asked
    ├── TunnelError            the agent-server connection failed
    │   ├── TunnelUnavailable  no tunnel could be had in time
    │   ├── HandshakeError     TLS handshake failed or was refused
    │   │   ├── AuthenticationError   the server refused our client certificate
    │   │   ├── TLSInspectionDetected a middlebox answered with a certificate not from our CA
    │   │   └── WebSocketRefused      the WebSocket upgrade was answered with an error status
    │   ├── PathError          no TCP path to a host: directly or through the corporate proxy
    │   │   └── UpstreamProxyError  the corporate proxy would not carry us (407, 403, ...)
    │   │       └── PacError          the PAC file could not be fetched, run or understood
    │   └── TunnelClosed       the connection ended (GOAWAY, EOF, reset, ping timeout)
    ├── StreamError            one proxied stream failed; the tunnel lives on
    │   ├── StreamRefused      the server answered the CONNECT with an error status
    │   ├── StreamUnprocessed  the server refused the stream unseen (draining): safe to retry
    │   └── TooManyStreams     the tunnel is at the server's MAX_CONCURRENT_STREAMS (503)
    ├── TargetError            the server could not reach a target (has a status)
    │   ├── PolicyRefused      the target policy refused it (403)
    │   ├── ResolveError       the name did not resolve (502)
    │   ├── DialRefused        the target refused or reset the connection (502)
    │   ├── DialTimeout        the connect timed out (504)
    │   └── CircuitOpen        the target's circuit breaker is open (503)
    ├── ProxyProtocolError     a local client sent something we cannot proxy (has a status)
    │   └── ResponseBroken     a target's HTTP/1.1 response cannot be framed (502)
    ├── StatusUnavailable      ``fluidity status`` got no status from the agent
    └── LifecycleError         the AWS control plane (wake/query/sleep/kill) failed
"""

from __future__ import annotations


class FluidityError(Exception):
    """Root of every error Fluidity raises on purpose."""


class ConfigError(FluidityError):
    """A configuration file or value is wrong; the message names the key and the fix."""


class CertificateError(FluidityError):
    """The private-CA tool cannot do what was asked (no CA yet, file exists, bad name...)."""


class TunnelError(FluidityError):
    """The agent-server connection failed."""


class TunnelUnavailable(TunnelError):
    """No tunnel connection could be had within the wait allowed."""


class HandshakeError(TunnelError):
    """The TLS handshake failed, timed out, or was refused; ``reason`` is a short label
    (``connect_failed``, ``timeout``, ``certificate_untrusted``...) for logs and metrics."""

    def __init__(self, message: str, reason: str = "tls_error") -> None:
        super().__init__(message)
        self.reason = reason


class AuthenticationError(HandshakeError):
    """The server refused our client certificate."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "certificate_refused")


class TLSInspectionDetected(HandshakeError):
    """The network answered the server's TLS handshake with a certificate our CA did not
    issue: a TLS-inspecting proxy (Zscaler, Blue Coat, Palo Alto...) is in the way.

    ``server`` is the name we asked for and ``issuer`` the issuer of what came back;
    ``verify_message`` is OpenSSL's verdict on it, if known (a wrong ``tls.ca`` looks
    the same from the agent, and the verdict helps tell the two apart).
    """

    def __init__(self, server: str, issuer: str, verify_message: str = "") -> None:
        verdict = f" ({verify_message})" if verify_message else ""
        super().__init__(
            f"TLS inspection detected: the certificate for {server} was issued by {issuer}, "
            f"not by your Fluidity CA{verdict}; set transport: websocket (or auto) in "
            "agent.yaml to tunnel through it, and websocket.outer_ca to the proxy's CA if "
            "the system does not already trust it (or, if no proxy inspects TLS here, check "
            "that tls.ca is the CA that issued the server's certificate)",
            "tls_inspection",
        )
        self.server = server
        self.issuer = issuer


class WebSocketRefused(HandshakeError):
    """The server, a load balancer or a proxy answered the WebSocket upgrade with
    ``status`` instead of 101."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, "websocket_refused")
        self.status = status


class PathError(TunnelError):
    """No TCP connection to a host could be opened, directly or through the corporate
    proxy; ``status`` is what a local client is answered when it waited for it (502,
    504 for a timeout)."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class UpstreamProxyError(PathError):
    """The corporate proxy would not carry us to the host (refused credentials, a 403,
    an unreachable proxy); the message names the proxy, what it said and the fix."""


class PacError(UpstreamProxyError):
    """The PAC file could not be fetched or evaluated, or its answer is unusable."""


class TunnelClosed(TunnelError):
    """The tunnel connection ended: GOAWAY, end of stream, reset or ping timeout."""


class StreamError(FluidityError):
    """One proxied stream failed; the tunnel itself lives on."""


class StreamRefused(StreamError):
    """The server answered a CONNECT with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class StreamUnprocessed(StreamError):
    """The server refused a new stream without processing it (RST_STREAM REFUSED_STREAM,
    sent while it drains): nothing reached a target, so opening it again is safe."""


class TooManyStreams(StreamError):
    """The tunnel already carries the server's maximum of concurrent streams.

    The server sets it (``limits.max_streams_per_tunnel``, sent as HTTP/2
    MAX_CONCURRENT_STREAMS); the agent then opens another tunnel, and answers the
    client 503 only once ``max_tunnels`` tunnels are all full, until a stream ends.
    """

    status = 503


class TargetError(FluidityError):
    """The server could not reach a target; ``status`` is what the stream is answered,
    ``kind`` the label metrics count it under."""

    status = 502
    kind = "target_error"


class PolicyRefused(TargetError):
    status = 403
    kind = "policy_refused"


class ResolveError(TargetError):
    status = 502
    kind = "resolve_failed"


class DialRefused(TargetError):
    status = 502
    kind = "dial_refused"


class DialTimeout(TargetError):
    status = 504
    kind = "dial_timeout"


class CircuitOpen(TargetError):
    status = 503
    kind = "circuit_open"


class ProxyProtocolError(FluidityError):
    """A local client sent something the agent cannot proxy; ``status`` is the answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ResponseBroken(ProxyProtocolError):
    """A target's HTTP/1.1 response is malformed or cut short: the client gets 502."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502)


class StatusUnavailable(FluidityError):
    """``fluidity status`` could not read the agent's status: nothing listens there, it is
    not a fluidity agent, or it wants credentials; the message says which and what to do."""


class LifecycleError(FluidityError):
    """The AWS lifecycle control plane failed: an AWS API call or a function URL answered
    an error; the message names the call and the likely fix (credentials, IAM, names)."""
