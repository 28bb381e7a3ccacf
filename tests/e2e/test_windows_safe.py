"""A Windows-safe agent: no unguarded POSIX-only call on its code paths, and a real agent
process on asyncio's own event loop (what Windows gets: uvloop does not exist there)."""

from __future__ import annotations

import ast
import asyncio
import signal
import tomllib
from pathlib import Path

import httpx

from fluidity.pki.certs import QuickstartPKI
from support.harness import LOOPBACK, Process, agent_yaml, server_yaml, start_process
from support.origins import RecordingOrigin

SRC = Path(__file__).resolve().parents[2] / "src" / "fluidity"

# Everything the agent, `fluidity status`, `certs` and `quickstart` run on a laptop: every
# package but the server's and the AWS control plane's, and the top-level modules.
LAPTOP_PACKAGES = ("agent", "transport", "protocol", "config", "pki", "observe")
AGENT_PATH = [
    *(path for package in LAPTOP_PACKAGES for path in sorted((SRC / package).glob("*.py"))),
    *sorted(SRC.glob("*.py")),
]

POSIX_ONLY_ATTRIBUTES = {
    "os": {"fork", "forkpty", "getuid", "geteuid", "getgid", "getegid", "setsid", "setuid",
           "killpg", "getpgid", "setpgrp", "chown", "lchown", "chmod", "fchmod", "mkfifo",
           "pipe2", "O_NOFOLLOW", "O_CLOEXEC", "uname", "nice", "sync", "WNOHANG"},
    "signal": {"SIGHUP", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGPIPE", "SIGCHLD",
               "SIGALRM", "SIGSTOP", "SIGCONT", "SIGWINCH", "alarm", "pause", "setitimer"},
    "socket": {"AF_UNIX", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "SO_REUSEPORT"},
}  # fmt: skip
POSIX_ONLY_METHODS = {"chmod", "lchmod", "add_signal_handler", "remove_signal_handler", "st_mode"}
POSIX_ONLY_MODULES = {"fcntl", "pwd", "grp", "resource", "termios", "tty", "pty", "uvloop",
                      "curses", "posix", "syslog"}  # fmt: skip
MARKER = "# windows:"


def posix_only_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each POSIX-only module, attribute or method the code touches."""
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits += [(node.lineno, a.name) for a in node.names if a.name in POSIX_ONLY_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module in POSIX_ONLY_MODULES:
            hits.append((node.lineno, node.module))
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in POSIX_ONLY_ATTRIBUTES and node.attr in POSIX_ONLY_ATTRIBUTES[owner]:
                hits.append((node.lineno, f"{owner}.{node.attr}"))
            elif owner not in POSIX_ONLY_ATTRIBUTES and node.attr in POSIX_ONLY_METHODS:
                hits.append((node.lineno, f".{node.attr}"))
    return hits


def is_explained(lines: list[str], lineno: int) -> bool:
    """A ``# windows:`` comment on the line or one of the three above says how it is guarded."""
    return any(MARKER in line for line in lines[max(lineno - 4, 0) : lineno])


def test_every_posix_only_use_on_the_agent_path_is_guarded_and_says_how() -> None:
    unexplained = []
    for path in AGENT_PATH:
        source = path.read_text()
        lines = source.splitlines()
        for lineno, what in posix_only_uses(ast.parse(source)):
            if not is_explained(lines, lineno):
                unexplained.append(f"{path.relative_to(SRC)}:{lineno}: {what}")
    assert not unexplained, "POSIX-only, without a '# windows:' guard note:\n" + "\n".join(
        unexplained
    )


def test_the_audit_catches_what_it_looks_for() -> None:
    sample = "import fcntl\nimport os\nos.fork()\nloop.add_signal_handler(1, f)\np.chmod(0o600)\n"
    assert [what for _, what in posix_only_uses(ast.parse(sample))] == [
        "fcntl",
        "os.fork",
        ".add_signal_handler",
        ".chmod",
    ]
    guarded = "x = 1\n# windows: not there\nos.fork()\n"
    assert is_explained(guarded.splitlines(), 3)
    assert not is_explained("os.fork()\n".splitlines(), 1)


def test_uvloop_is_never_a_windows_dependency() -> None:
    project = tomllib.loads((SRC.parent.parent / "pyproject.toml").read_text())["project"]
    [uvloop] = [d for d in project["dependencies"] if d.startswith("uvloop")]
    assert "sys_platform != 'win32'" in uvloop


# -- a real agent process on asyncio's own loop ------------------------------------------------


async def test_agent_on_the_default_asyncio_loop_proxies_and_stops_on_ctrl_c(
    pki: QuickstartPKI, tmp_path: Path, processes: list[Process], origin: RecordingOrigin
) -> None:
    server = start_process("server", server_yaml(pki), tmp_path)
    processes.append(server)
    agent = start_process(
        "agent", agent_yaml(pki, server.port), tmp_path, env={"FLUIDITY_NO_UVLOOP": "1"}
    )
    processes.append(agent)
    proxy = f"http://{LOOPBACK}:{agent.port}"
    async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=15) as client:
        page = await client.get(f"{origin.url}/through-asyncio")
        assert (page.status_code, page.text) == (200, "hello")
        body = await client.get(f"{origin.url}/bytes/{3 << 20}")
        assert len(body.content) == 3 << 20
    async with httpx.AsyncClient(trust_env=False, timeout=15) as client:
        status = (await client.get(f"http://{LOOPBACK}:{agent.port}/fluidity/status")).json()
    assert status["event_loop"].startswith("asyncio")
    assert status["state"] == "connected"
    assert origin.heads[0].startswith(b"GET /through-asyncio HTTP/1.1")

    agent.popen.send_signal(signal.SIGINT)  # Ctrl-C: the signal Windows has too
    async with asyncio.timeout(15):
        code = await asyncio.to_thread(agent.popen.wait)
    log = agent.log()
    assert code == 0, log
    assert "event loop: asyncio" in log
    waiting, up = log.index("waiting for the tunnel to server"), log.index("tunnel up after ")
    assert waiting < up
    assert "SIGINT: shutting down gracefully" in log
