"""``fluidity status``: ask the running agent how it is, and say it to a person or a script.

The agent answers ``GET /fluidity/status`` (origin-form, on its own proxy
port) with the JSON of ``Agent.status()``. This module fetches it
(``fetch_status``), renders it (``format_status``, a pure function) and, with
``--watch``, refreshes it every ``--interval`` seconds until Ctrl-C or
``--count`` refreshes.
"""

from __future__ import annotations

import base64
import http.client
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from fluidity.config.agent import AgentConfig
from fluidity.config.values import Address
from fluidity.errors import StatusUnavailable

STATUS_PATH = "/fluidity/status"
CLEAR_SCREEN = "\x1b[H\x1b[2J"

Status = Mapping[str, Any]


@dataclass(frozen=True)
class StatusTarget:
    """Where the agent listens, and the proxy credentials its status page may need."""

    host: str
    port: int
    credentials: tuple[str, str] | None = None

    @classmethod
    def of(cls, config: AgentConfig) -> StatusTarget:
        """The agent of ``config``: its listen address (a wildcard means loopback)."""
        host = config.listen.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        credentials = None
        if config.auth is not None:
            credentials = (config.auth.username, config.auth.resolve_password())
        return cls(host, config.listen.port, credentials)

    @classmethod
    def at(cls, address: Address) -> StatusTarget:
        return cls(address.host, address.port)

    def __str__(self) -> str:
        return str(Address(self.host, self.port))


def fetch_status(target: StatusTarget, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's status; ``StatusUnavailable`` naming the problem and the fix if none."""
    headers = {"Host": str(target), "Accept": "application/json"}
    if target.credentials is not None:
        token = base64.b64encode(":".join(target.credentials).encode()).decode()
        headers["Proxy-Authorization"] = f"Basic {token}"
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.request("GET", STATUS_PATH, headers=headers)
        response = conn.getresponse()
        body = response.read(1 << 20)
    except ConnectionRefusedError:
        raise StatusUnavailable(
            f"no agent is listening on {target} (is `fluidity agent` running?)"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise StatusUnavailable(f"cannot read the agent's status from {target}: {exc}") from None
    finally:
        conn.close()
    return _parse(target, response.status, body)


def _parse(target: StatusTarget, status: int, body: bytes) -> dict[str, Any]:
    if status == 407:
        raise StatusUnavailable(
            f"the agent on {target} wants its proxy credentials: pass the --config it runs "
            "with (its auth: section)"
        )
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status != 200 or not isinstance(answer, dict) or "state" not in answer:
        raise StatusUnavailable(
            f"{target} answered {status} without a status: is it a fluidity agent? "
            "Check --config or --address"
        )
    return answer


# -- rendering (pure) ---------------------------------------------------------


def format_status(status: Status) -> str:
    """The status as a few aligned lines for a person."""
    listen = status.get("listen") or "?"
    lines = [
        f"fluidity agent {status.get('version', '?')} on {listen}, "
        f"up {format_duration(status.get('uptime'))}"
    ]
    rows = [
        ("tunnel", _tunnel_line(status)),
        ("reconnects", str(status.get("reconnects", 0))),
        ("streams", _streams_line(status.get("streams") or {})),
        ("clients", f"{status.get('client_connections', 0)} local connections"),
        (
            "traffic",
            f"in {format_bytes(status.get('bytes_in', 0))}, "
            f"out {format_bytes(status.get('bytes_out', 0))}",
        ),
        ("last error", status.get("last_error") or "none"),
    ]
    if (tunnels := status.get("tunnels") or 0) > 1:  # extra tunnels: one was full
        rows.insert(1, ("tunnels", f"{tunnels} connections to the server (max_tunnels)"))
    if status.get("metrics"):
        rows.append(("metrics", str(status["metrics"])))
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


def _tunnel_line(status: Status) -> str:
    state = status.get("state", "?")
    server = status.get("server", "?")
    if state == "connected":
        return f"connected to {server} for {format_duration(status.get('connected_for'))}"
    if state == "auth failed":
        return f"AUTH FAILED at {server}: the server refuses our client certificate"
    return f"{state} ({server})"


def _streams_line(streams: Mapping[str, int]) -> str:
    total = sum(streams.values())
    if not total:
        return "0 active"
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(streams.items()))
    return f"{total} active: {kinds}"


def format_bytes(count: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``..."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """``0.4 s``, ``12 s``, ``5 min 03 s``, ``2 h 07 min``, ``3 d 4 h``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


# -- the command ----------------------------------------------------------------


@dataclass(frozen=True)
class WatchOptions:
    """``--json``, ``--watch``, ``--interval`` and ``--count``."""

    as_json: bool = False
    watch: bool = False
    interval: float = 2.0
    count: int | None = None


def run(
    target: StatusTarget,
    options: WatchOptions,
    *,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Print the status once, or every ``interval`` s while watching; the exit status.

    Once: 0, or ``StatusUnavailable`` propagates. Watching: a failed refresh is
    printed in place and watching goes on; it ends after ``count`` refreshes
    (exit 0 if the last one worked, else 1) or at Ctrl-C (exit 0).
    """
    out = out or sys.stdout
    if not options.watch:
        _show(fetch_status(target), options, out)
        return 0
    refreshes, ok = 0, False
    try:
        while options.count is None or refreshes < options.count:
            if refreshes:
                sleep(options.interval)
            ok = _refresh(target, options, out)
            refreshes += 1
    except KeyboardInterrupt:
        return 0
    return 0 if ok else 1


def _refresh(target: StatusTarget, options: WatchOptions, out: TextIO) -> bool:
    if _clears_screen(options, out):
        out.write(CLEAR_SCREEN)
    try:
        _show(fetch_status(target), options, out)
    except StatusUnavailable as exc:
        message = json.dumps({"error": str(exc)}) if options.as_json else f"fluidity: {exc}"
        print(message, file=out, flush=True)
        return False
    return True


def _clears_screen(options: WatchOptions, out: TextIO) -> bool:
    # windows: its console shows ANSI escapes as text unless VT mode was turned on
    return not options.as_json and sys.platform != "win32" and out.isatty()


def _show(status: Status, options: WatchOptions, out: TextIO) -> None:
    if options.as_json:
        # One object per line while watching (JSON Lines); indented for a single look.
        text = json.dumps(status, sort_keys=True, indent=None if options.watch else 2)
    else:
        text = format_status(status)
    if options.watch and not options.as_json and not _clears_screen(options, out):
        text += "\n"  # a blank line between refreshes in a log, a pipe, a Windows console
    print(text, file=out, flush=True)
