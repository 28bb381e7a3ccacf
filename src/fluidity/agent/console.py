"""The agent's dashboard: ``http://127.0.0.1:8080/`` on its own proxy port.

The page and the rules for serving it are :mod:`fluidity.observe.dashboard`;
this module gives them the agent's state and carries out its buttons:

* ``GET /`` the page, ``GET /fluidity/dashboard.json`` what it draws: the same
  ``Agent.status()`` that ``fluidity status`` prints, plus the bounded history
  its ``Metrics`` keep (:mod:`fluidity.observe.history`);
* ``POST /fluidity/reconnect`` starts a tunnel attempt at once;
* with ``lifecycle:``, ``POST /fluidity/wake`` wakes the cloud server (and
  reconnects to the address it reports) and ``POST /fluidity/kill`` stops it.
  Both run in the background; ``action`` in the JSON tells how they went.

Once a second (``sample``) the console records the tunnel's byte counters and
open streams into the history, and adds each client connection's new bytes to
its current target (``bytes_in``/``bytes_out`` of ``ClientConnection``); a
connection that closes in between is counted as it goes (``client_gone``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fluidity.agent.client import ClientConnection
from fluidity.agent.keeper import TunnelKeeper
from fluidity.config.agent import AgentConfig
from fluidity.errors import ConfigError, LifecycleError
from fluidity.lifecycle.client import ControlPlaneClient
from fluidity.observe import dashboard
from fluidity.observe.history import INTERVAL
from fluidity.observe.metrics import Metrics
from fluidity.protocol.proxy import LocalRequest, LocalResponse

log = logging.getLogger(__name__)

LocalPaths = Mapping[str, Callable[[LocalRequest], LocalResponse]]


class ConsoleHost(Protocol):
    """What the console needs of the agent (``fluidity.agent.agent.Agent``)."""

    config: AgentConfig
    keeper: TunnelKeeper
    metrics: Metrics
    clients: set[ClientConnection]
    credentials: tuple[str, str] | None

    def status(self) -> dict[str, Any]: ...


class AgentConsole:
    """Serves the dashboard of ``agent`` and samples its history while it runs."""

    def __init__(self, agent: ConsoleHost) -> None:
        self.agent = agent
        self.action: dict[str, Any] | None = None  # the last button pressed, and its outcome
        self._seen: dict[ClientConnection, tuple[int, int]] = {}  # bytes already counted
        self._sampler: asyncio.Task[None] | None = None
        self._actions: set[asyncio.Task[None]] = set()

    def paths(self) -> LocalPaths:
        """The origin-form paths the console answers, for the agent's ``local_paths``."""
        found: dict[str, Callable[[LocalRequest], LocalResponse]] = {
            dashboard.PAGE_PATH: self._page,
            dashboard.DATA_PATH: self._data,
        }
        for path in dashboard.ACTION_PATHS:
            found[path] = self._act
        return found

    # -- lifetime ---------------------------------------------------------------

    def start(self) -> None:
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def close(self) -> None:
        """Stop sampling and any wake or kill still under way."""
        tasks = [t for t in (self._sampler, *self._actions) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sample_forever(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(INTERVAL)

    def sample(self) -> None:
        """Record one throughput sample and the client bytes since the last one."""
        keeper, history = self.agent.keeper, self.agent.metrics.history
        streams = sum(1 for c in self.agent.clients if c.stream is not None)
        history.sample(keeper.bytes_in, keeper.bytes_out, streams)
        for client in self.agent.clients:
            self._count(client)

    def client_gone(self, client: ClientConnection) -> None:
        """Count what a closing client moved since the last sample, then forget it."""
        self._count(client)
        self._seen.pop(client, None)

    def _count(self, client: ClientConnection) -> None:
        seen_in, seen_out = self._seen.get(client, (0, 0))
        new = client.bytes_in - seen_in + client.bytes_out - seen_out
        if new and client.target:
            self.agent.metrics.history.target_bytes(client.target, new)
        self._seen[client] = (client.bytes_in, client.bytes_out)

    # -- what the page sees ---------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The JSON the page polls (``role``, ``status``, ``history``, ``fixes``...)."""
        lifecycle = self.agent.config.lifecycle
        return {
            "role": "agent",
            "status": self.agent.status(),
            "history": self.agent.metrics.history.view(),
            "fixes": dict(dashboard.FIXES),
            "actions": {
                "reconnect": True,
                "wake": lifecycle is not None,
                "kill": lifecycle is not None and lifecycle.kill_url is not None,
            },
            "action": self.action,
        }

    def _page(self, request: LocalRequest) -> LocalResponse:
        return self._serve(request, dashboard.page)

    def _data(self, request: LocalRequest) -> LocalResponse:
        return self._serve(request, lambda: dashboard.data(self.view()))

    def _act(self, request: LocalRequest) -> LocalResponse:
        def act() -> dashboard.Answer:
            dashboard.check_action(request.method, request.headers)
            name = dashboard.ACTION_PATHS[request.path]
            return dashboard.data({"action": self._start_action(name)})

        return self._serve(request, act)

    def _serve(
        self, request: LocalRequest, answer: Callable[[], dashboard.Answer]
    ) -> LocalResponse:
        """Check the host and credentials, then answer (or say why not)."""
        try:
            dashboard.check_host(request.headers)
            dashboard.check_credentials(
                request.headers,
                self.agent.credentials,
                proxy_authenticated=request.authenticated,
            )
            found = answer()
        except dashboard.DashboardRefused as exc:
            found = dashboard.refusal(exc)
        return LocalResponse(found.status, found.content_type, found.body, found.headers)

    # -- the buttons ------------------------------------------------------------------

    def _start_action(self, name: str) -> dict[str, Any]:
        lifecycle = self.agent.config.lifecycle
        if name == "reconnect":
            self.agent.keeper.reconnect_now()
            log.info("dashboard: reconnect now")
            return self._done(name, "done", "reconnecting to the server now")
        if lifecycle is None:
            raise dashboard.DashboardRefused(
                409, f"{name} needs a lifecycle: section in agent.yaml (docs/aws.md)"
            )
        if name == "kill" and lifecycle.kill_url is None:
            raise dashboard.DashboardRefused(409, "kill needs lifecycle.kill_url in agent.yaml")
        if any(not task.done() for task in self._actions):
            raise dashboard.DashboardRefused(409, "a wake or kill is still under way: wait")
        control = ControlPlaneClient(lifecycle)
        job = self._wake(control) if name == "wake" else self._kill(control)
        task = asyncio.get_running_loop().create_task(job)
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)
        return self._done(name, "running", f"asking the control plane to {name} the server")

    async def _wake(self, control: ControlPlaneClient) -> None:
        try:
            address = await control.wait_until_ready(progress=log.info)
        except (LifecycleError, ConfigError) as exc:
            self._done("wake", "failed", str(exc))
            return
        self.agent.keeper.host = address
        self.agent.keeper.reconnect_now()
        self._done("wake", "done", f"the server is up at {address}")

    async def _kill(self, control: ControlPlaneClient) -> None:
        try:
            status = await control.kill()
        except (LifecycleError, ConfigError) as exc:
            self._done("kill", "failed", str(exc))
            return
        self._done("kill", "done", f"the cloud server is {status.status.value}")

    def _done(self, name: str, state: str, message: str) -> dict[str, Any]:
        self.action = {"name": name, "state": state, "message": message, "time": time.time()}
        return self.action
