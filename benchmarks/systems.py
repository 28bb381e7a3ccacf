"""The systems under test, each started as real processes on loopback.

* ``direct``: no proxy; the client talks to the origin itself (the ceiling).
* ``fluidity``: ``fluidity server`` and ``fluidity agent`` processes, full mTLS
  (TLS 1.3, client certificates from a fresh private CA), uvloop when installed.
* ``pproxy-plaintext``: pproxy, a Python (asyncio, uvloop) HTTP proxy, one process,
  plaintext: the Python peer, with no TLS and no second hop.
* ``stunnel+tinyproxy``: the classic C chain, built with the same certificates::

      client -> stunnel (client mode, mTLS) -> stunnel (server mode) -> tinyproxy -> origin

A system is a context manager; inside it, ``proxy`` is the address a client
speaks HTTP proxy to (None for direct) and ``pids`` the processes whose CPU
time and memory are measured.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fluidity.pki.certs import QuickstartPKI, ensure_quickstart_pki

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0


class BenchmarkError(Exception):
    """A system under test could not be started or misbehaved; the message says which."""


@dataclass
class System:
    """A running system: where to send proxy requests, which processes to measure."""

    name: str
    proxy: tuple[str, int] | None
    pids: list[int] = field(default_factory=list)
    max_idle: int = 0  # how many idle tunnels to hold in the memory measurement (0: none)
    notes: str = ""
    logs: dict[str, Path] = field(default_factory=dict)


def available() -> dict[str, str]:
    """Which systems this machine can run, with a note for the missing ones."""
    found = {"direct": "", "fluidity": ""}
    found["pproxy-plaintext"] = (
        "" if importlib.util.find_spec("pproxy") else "not installed: pip install pproxy"
    )
    missing = [tool for tool in ("stunnel4", "tinyproxy") if shutil.which(tool) is None]
    found["stunnel+tinyproxy"] = (
        f"not installed: {', '.join(missing)} (apt-get install stunnel4 tinyproxy)"
        if missing
        else ""
    )
    return found


def free_port() -> int:
    """A port that was free a moment ago (for programs that cannot report port 0)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Return once ``port`` accepts TCP; raise if ``proc`` exits or time runs out."""
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchmarkError(f"{proc.args!r} exited: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.02)  # polling another process's listener
    raise BenchmarkError(f"{proc.args!r} did not listen on {port}: {log.read_text()}")


def wait_log(pattern: str, proc: subprocess.Popen[bytes], log: Path) -> re.Match[str]:
    """Return the first match of ``pattern`` in ``log``; raise if ``proc`` exits first."""
    regex = re.compile(pattern)
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        match = regex.search(log.read_text(errors="replace"))
        if match:
            return match
        if proc.poll() is not None:
            break
        time.sleep(0.02)  # polling a log file written by another process
    raise BenchmarkError(f"{proc.args!r} never logged {pattern!r}: {log.read_text()}")


class Processes:
    """Starts processes with their output in log files; stops them all at exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.started.append(proc)
        return proc, log

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def direct(workdir: Path) -> Iterator[System]:
    yield System("direct", None)


@contextlib.contextmanager
def fluidity(workdir: Path, *, idle: int, stream_limit: int | None = 0) -> Iterator[System]:
    """A fluidity server and agent as processes, sized for ``idle`` streams at once.

    ``stream_limit`` is the server's ``limits.max_streams_per_tunnel``: 0 (the
    default) sizes one tunnel for every stream; ``None`` keeps the server's own
    default (1,000), so that more streams need more tunnels (the agent's
    ``max_tunnels``).
    """
    pki = ensure_quickstart_pki(workdir / "pki")
    room = max(idle, 1000) + 1000  # idle tunnels plus the 1,000 load-test connections
    server_cfg: dict[str, object] = {
        "listen": f"{LOOPBACK}:0",
        "tls": {"ca": str(pki.ca_cert), "cert": str(pki.server_cert), "key": str(pki.server_key)},
        "targets": {"allow": ["127.0.0.0/8"]},
        "drain_timeout": 1.0,
    }
    if stream_limit is not None:
        server_cfg["limits"] = {"max_streams_per_tunnel": stream_limit or room}
    procs = Processes(workdir)
    try:
        server, server_log = procs.start(
            "fluidity-server", _fluidity_argv("server", workdir, server_cfg)
        )
        port = int(wait_log(r"listening on [\d.]+:(\d+)", server, server_log).group(1))
        agent_cfg = {
            "listen": f"{LOOPBACK}:0",
            "server": f"{LOOPBACK}:{port}",
            "server_name": "localhost",
            "tls": {
                "ca": str(pki.ca_cert),
                "cert": str(pki.client_cert),
                "key": str(pki.client_key),
            },
            "max_client_connections": room,
            "drain_timeout": 1.0,
        }
        agent, agent_log = procs.start(
            "fluidity-agent", _fluidity_argv("agent", workdir, agent_cfg)
        )
        proxy_port = int(wait_log(r"HTTP proxy on [\d.]+:(\d+)", agent, agent_log).group(1))
        wait_log(r"tunnel up", agent, agent_log)
        yield System(
            "fluidity",
            (LOOPBACK, proxy_port),
            [agent.pid, server.pid],
            max_idle=idle,
            notes=f"event loop: {_loop_name()}",
            logs={"agent": agent_log, "server": server_log},
        )
    finally:
        procs.stop_all()


def _fluidity_argv(role: str, workdir: Path, config: dict[str, object]) -> list[str]:
    path = workdir / f"{role}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "fluidity.cli", role, "--config", str(path)]


def _loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio (uvloop not installed)"
    return f"uvloop {uvloop.__version__}"


@contextlib.contextmanager
def pproxy(workdir: Path, *, idle: int) -> Iterator[System]:
    """pproxy as a plaintext HTTP proxy (``-l http://``), on uvloop when installed."""
    port = free_port()
    procs = Processes(workdir)
    try:
        runner = str(Path(__file__).with_name("pproxy_run.py"))  # run from the workdir
        argv = [sys.executable, runner, "-l", f"http://{LOOPBACK}:{port}"]
        proc, log = procs.start("pproxy", argv)
        wait_listening(port, proc, log)
        yield System(
            "pproxy-plaintext",
            (LOOPBACK, port),
            [proc.pid],
            max_idle=idle,
            notes=f"pproxy {_dist_version('pproxy')}, plaintext, event loop: {_loop_name()}",
        )
    finally:
        procs.stop_all()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


@contextlib.contextmanager
def stunnel_tinyproxy(workdir: Path, *, idle: int) -> Iterator[System]:
    """client -> stunnel client (mTLS) -> stunnel server -> tinyproxy, same certificates."""
    pki = ensure_quickstart_pki(workdir / "pki")
    tiny_port, server_port, client_port = free_port(), free_port(), free_port()
    procs = Processes(workdir)
    try:
        tiny_conf = workdir / "tinyproxy.conf"
        tiny_conf.write_text(_tinyproxy_conf(tiny_port, idle))
        tiny, tiny_log = procs.start("tinyproxy", ["tinyproxy", "-d", "-c", str(tiny_conf)])
        wait_listening(tiny_port, tiny, tiny_log)
        stunnel_server, s_log = procs.start(
            "stunnel-server",
            [
                "stunnel4",
                _write(
                    workdir / "stunnel-server.conf", _stunnel_server(pki, server_port, tiny_port)
                ),
            ],
        )
        wait_listening(server_port, stunnel_server, s_log)
        stunnel_client, c_log = procs.start(
            "stunnel-client",
            [
                "stunnel4",
                _write(
                    workdir / "stunnel-client.conf", _stunnel_client(pki, client_port, server_port)
                ),
            ],
        )
        wait_listening(client_port, stunnel_client, c_log)
        yield System(
            "stunnel+tinyproxy",
            (LOOPBACK, client_port),
            [stunnel_client.pid, stunnel_server.pid, tiny.pid],
            max_idle=idle,
            notes="stunnel "
            + _version(["stunnel4", "-version"], r"stunnel ([\d.]+)")
            + ", tinyproxy "
            + _version(["tinyproxy", "-v"], r"tinyproxy ([\d.]+)"),
        )
    finally:
        procs.stop_all()


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _version(argv: list[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except OSError:
        return "?"
    match = re.search(pattern, (out.stdout + out.stderr).decode(errors="replace"))
    return match.group(1) if match else "?"


def _tinyproxy_conf(port: int, idle: int) -> str:
    # No ConnectPort line: CONNECT to any port (the origin's are random).
    return (
        f"Port {port}\nListen {LOOPBACK}\nTimeout 600\nMaxClients {max(idle, 1000) + 1000}\n"
        "LogLevel Critical\nDisableViaHeader Yes\nAllow 127.0.0.1\n"
    )


def _stunnel_common(pki: QuickstartPKI, cert: Path, key: Path) -> str:
    return (
        "foreground = yes\npid =\nsyslog = no\ndebug = 3\n"
        f"[tunnel]\ncert = {cert}\nkey = {key}\nCAfile = {pki.ca_cert}\n"
        "verifyChain = yes\nsslVersionMin = TLSv1.3\n"
    )


def _stunnel_server(pki: QuickstartPKI, port: int, tiny_port: int) -> str:
    return _stunnel_common(pki, pki.server_cert, pki.server_key) + (
        f"accept = {LOOPBACK}:{port}\nconnect = {LOOPBACK}:{tiny_port}\nrequireCert = yes\n"
    )


def _stunnel_client(pki: QuickstartPKI, port: int, server_port: int) -> str:
    return _stunnel_common(pki, pki.client_cert, pki.client_key) + (
        f"client = yes\naccept = {LOOPBACK}:{port}\nconnect = {LOOPBACK}:{server_port}\n"
        "checkHost = localhost\n"
    )
