"""Reload of the agent's config on SIGHUP, the tunnel left up.

``reload_agent`` reads ``agent.yaml`` again (with the environment and the
command-line overrides) and applies what can change under a live tunnel:

* ``upstream_proxy``: the next connection to the server (a reconnect) and
  every new ``direct:`` connection go through the new corporate proxy; the
  tunnel that is up stays on the path it took.
* ``direct``: new client requests are routed by the new list (and
  ``/proxy.pac`` serves it).
* ``auth``: new client connections must present the new credentials; the
  ones already authenticated carry on.

Everything else (``server``, ``server_name``, ``tls``, ``transport``,
``websocket``, ``listen``, ``metrics``, timeouts, ``lifecycle``, logging)
is bound to the tunnel or the listeners: a change is logged as needing a
restart and the running value stays. The agent does not reconnect by itself
for a new ``server`` or ``tls``: that would drop every stream in flight at a
moment nobody chose, so the operator restarts it when convenient.

A config that does not load or validate (a missing ``password_env`` variable
included) changes nothing: one error line names the key, and the previous
config stays.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from fluidity.agent.agent import Agent
from fluidity.agent.local import proxy_credentials
from fluidity.config.agent import AgentConfig
from fluidity.config.fields import changed_keys
from fluidity.errors import ConfigError

log = logging.getLogger(__name__)

RELOADABLE = ("upstream_proxy", "direct", "auth")


def reload_agent(agent: Agent, load: Callable[[], AgentConfig], reason: str = "SIGHUP") -> bool:
    """Read the config with ``load`` and apply its reloadable keys to ``agent``; False
    (one error line naming the key) keeps the previous config whole."""
    try:
        fresh = load()
        if fresh.upstream_proxy is not None:
            fresh.upstream_proxy.credentials()  # a missing password_env is an error now
        effective = dataclasses.replace(
            agent.config,
            upstream_proxy=fresh.upstream_proxy,
            direct=fresh.direct,
            auth=fresh.auth,
        )
        credentials = proxy_credentials(effective)
    except ConfigError as exc:
        log.error("config reload (%s) failed, still using the previous config: %s", reason, exc)
        return False
    pending = sorted(changed_keys(effective, fresh))
    if pending:
        log.warning(
            "config reload (%s): %s changed but needs a restart of the agent; "
            "the tunnel stays as it is",
            reason,
            ", ".join(pending),
        )
    changed = [key for key in RELOADABLE if getattr(agent.config, key) != getattr(fresh, key)]
    agent.config = effective
    agent.routing = effective.routing
    agent.credentials = credentials
    log.info(
        "config reloaded (%s): %s",
        reason,
        f"changed {', '.join(changed)}" if changed else "nothing to change",
    )
    return True
