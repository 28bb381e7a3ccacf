"""The agent's side of the control plane: signed calls to the wake/query/kill function URLs.

The function URLs use ``AuthType: AWS_IAM``, so every request is signed with SigV4
for the service ``lambda`` using the caller's credentials from the standard chain
(environment, profile, SSO...). Signing lives in :mod:`fluidity.lifecycle.aws`
(imported lazily); the HTTP itself is one call to an injectable :class:`Transport`,
by default the stdlib's ``urllib.request`` run in a worker thread.

:meth:`ControlPlaneClient.wait_until_ready` is what the agent runs at start: wake,
then poll ``query`` with exponential backoff (1 s doubling to 10 s) until the
server is ``ready``, reporting progress, within ``ready_timeout``. wake and query
are idempotent, so transient failures (network, 5xx, throttling) are retried;
a refusal (4xx: bad signature, no permission, wrong URL) is not.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from fluidity.errors import ConfigError, LifecycleError, TunnelUnavailable
from fluidity.lifecycle.decisions import ServerStatus, Status


@dataclass(frozen=True)
class LifecycleConfig:
    """The ``lifecycle:`` section of ``agent.yaml``: where the control plane is.

    ``region`` defaults to the one in the function URL's host name
    (``<id>.lambda-url.<region>.on.aws``), then to the AWS region chain.
    """

    wake_url: str
    query_url: str
    kill_url: str | None = None
    region: str | None = None
    kill_on_exit: bool = False
    ready_timeout: float = 300.0

    def __post_init__(self) -> None:
        for key in ("wake_url", "query_url", "kill_url"):
            url = getattr(self, key)
            if url is not None and urllib.parse.urlsplit(url).scheme not in ("https", "http"):
                raise ConfigError(
                    f"{key}: {url!r} is not a URL; use the stack output "
                    "(https://<id>.lambda-url.<region>.on.aws/)"
                )
        if not self.ready_timeout > 0:
            raise ConfigError(f"ready_timeout: {self.ready_timeout} must be > 0 seconds")


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes


class Transport(Protocol):
    """Sends one request and returns the response, whatever its status.

    Raises :class:`LifecycleError` only when no response was had (DNS, connect,
    TLS, timeout).
    """

    async def __call__(self, request: HttpRequest) -> HttpResponse: ...


class Signer(Protocol):
    def sign(self, method: str, url: str, body: bytes) -> dict[str, str]: ...


class UrllibTransport:
    """:class:`Transport` over ``urllib.request`` in a worker thread.

    Proxies come from ``proxy`` only, never from ``HTTPS_PROXY`` in the environment:
    that variable often points at the agent itself, which has no tunnel yet.
    """

    def __init__(self, *, timeout: float = 30.0, proxy: str | None = None) -> None:
        self.timeout = timeout
        proxies = {"http": proxy, "https": proxy} if proxy else {}
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        return await asyncio.to_thread(self._send, request)

    def _send(self, request: HttpRequest) -> HttpResponse:
        prepared = urllib.request.Request(
            request.url,
            data=request.body or None,
            headers=dict(request.headers),
            method=request.method,
        )
        try:
            with self._opener.open(prepared, timeout=self.timeout) as answer:
                return HttpResponse(answer.status, answer.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return HttpResponse(exc.code, exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LifecycleError(f"{request.method} {request.url}: {reason}") from exc


@dataclass(frozen=True)
class Backoff:
    """Delays between polls: ``initial``, doubling, capped at ``maximum`` (seconds)."""

    initial: float = 1.0
    maximum: float = 10.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


_URL_REGION = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws$")


def region_of(url: str) -> str | None:
    """The AWS region in a function URL's host name, if it is one."""
    host = urllib.parse.urlsplit(url).hostname or ""
    match = _URL_REGION.search(host)
    return match.group(1) if match else None


class ControlPlaneClient:
    """Signed calls to the control plane: ``wake``, ``query``, ``kill``, ``wait_until_ready``."""

    def __init__(
        self,
        config: LifecycleConfig,
        *,
        transport: Transport | None = None,
        signer: Signer | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._transport: Transport = transport or UrllibTransport()
        self._signer = signer
        self._backoff = backoff or Backoff()
        self._clock = clock

    async def wake(self) -> ServerStatus:
        """Ask for a running server (idempotent); answers the status, usually ``starting``.

        Raises :class:`LifecycleError` if the call fails (as do ``query`` and ``kill``).
        """
        return _raised(await self._attempt("wake"))

    async def query(self) -> ServerStatus:
        """The server's status and, when ready, its address."""
        return _raised(await self._attempt("query"))

    async def kill(self) -> ServerStatus:
        """Scale the server to zero now; needs ``kill_url``."""
        return _raised(await self._attempt("kill"))

    async def wait_until_ready(self, progress: Callable[[str], None]) -> str:
        """Wake the server and poll until it is ready; return its address.

        Progress lines go to ``progress`` ("waking server… starting (12 s)", then
        "ready at 203.0.113.7 after 41 s"). Raises :class:`TunnelUnavailable` if it
        is not ready within ``ready_timeout`` or the control plane refuses us, and
        :class:`ConfigError` if there are no AWS credentials or region.
        """
        start = self._clock()
        deadline = start + self.config.ready_timeout
        delays = self._backoff.delays()
        status: ServerStatus | None = None
        last_problem = "no answer from the control plane"
        call = "wake"
        while True:
            outcome = await self._attempt_within(call, deadline)
            if outcome is None:  # the deadline cut the call short
                break
            if isinstance(outcome, _Failure) and outcome.permanent:
                raise TunnelUnavailable(f"the control plane refused us: {outcome.message}")
            status = outcome if isinstance(outcome, ServerStatus) else status
            elapsed = self._clock() - start
            if isinstance(outcome, ServerStatus) and outcome.address:
                progress(f"ready at {outcome.address} after {elapsed:.0f} s")
                return outcome.address
            last_problem = (
                outcome.status.value if isinstance(outcome, ServerStatus) else outcome.message
            )
            progress(f"waking server… {last_problem} ({elapsed:.0f} s)")
            # wake again until it is seen not stopped (a sleep or kill may have raced us):
            # both calls are idempotent
            call = "wake" if status is None or status.status is Status.STOPPED else "query"
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            await asyncio.sleep(min(next(delays), remaining))
        raise TunnelUnavailable(
            f"the server was not ready after {self.config.ready_timeout:.0f} s "
            f"({last_problem}); check the ECS service's events and the server's "
            "CloudWatch logs, or raise lifecycle.ready_timeout"
        )

    async def _attempt_within(self, name: str, deadline: float) -> ServerStatus | _Failure | None:
        """One call, bounded by what is left of the deadline; ``None`` if it ran out."""
        try:
            async with asyncio.timeout(max(deadline - self._clock(), 0.0)):
                return await self._attempt(name)
        except TimeoutError:
            return None

    async def _attempt(self, name: str) -> ServerStatus | _Failure:
        """Sign, send and parse one call; a failure is returned, not raised."""
        method, url = self._endpoint(name)
        request = await asyncio.to_thread(self._signed, method, url)
        try:
            response = await self._transport(request)
        except LifecycleError as exc:
            return _Failure(str(exc), permanent=False)
        return _parse(name, url, response)

    def _endpoint(self, name: str) -> tuple[str, str]:
        if name == "query":
            return "GET", self.config.query_url
        if name == "wake":
            return "POST", self.config.wake_url
        if not self.config.kill_url:
            raise ConfigError("lifecycle.kill_url is not set: add the stack's KillUrl output")
        return "POST", self.config.kill_url

    def _signed(self, method: str, url: str) -> HttpRequest:
        """Sign in a worker thread: the first call may read files or fetch SSO tokens."""
        if self._signer is None:
            try:
                from fluidity.lifecycle import aws
            except ImportError as exc:
                raise ConfigError(
                    "the lifecycle: section needs botocore to sign its calls; "
                    "install 'fluidity[aws]'"
                ) from exc
            self._signer = aws.SigV4Signer(self.config.region or region_of(url))
        return HttpRequest(method, url, self._signer.sign(method, url, b""))


@dataclass(frozen=True)
class _Failure:
    """A call that failed; ``permanent`` for a 4xx refusal that retrying will not mend."""

    message: str
    permanent: bool


def _raised(outcome: ServerStatus | _Failure) -> ServerStatus:
    if isinstance(outcome, _Failure):
        raise LifecycleError(outcome.message)
    return outcome


def _parse(name: str, url: str, response: HttpResponse) -> ServerStatus | _Failure:
    """The status in a 200 answer, else a :class:`_Failure` naming the likely fix."""
    try:
        body = json.loads(response.body or b"{}")
    except ValueError:
        body = {"error": response.body[:200].decode("utf-8", "replace")}
    if response.status == 200 and isinstance(body, dict):
        try:
            return ServerStatus.from_json(body)
        except LifecycleError as exc:
            return _Failure(f"{name} ({url}): {exc}", permanent=True)
    detail = (body.get("error") or body.get("Message")) if isinstance(body, dict) else body
    problem = f"{name} ({url}) answered {response.status}: {detail}"
    if response.status == 403:
        return _Failure(
            f"{problem}; check your AWS credentials and that your IAM identity may call "
            "lambda:InvokeFunctionUrl on it (attach the stack's AgentInvokePolicy)",
            permanent=True,
        )
    if 400 <= response.status < 500 and response.status != 429:
        return _Failure(f"{problem}; check the lifecycle URLs in agent.yaml", permanent=True)
    return _Failure(problem, permanent=False)
