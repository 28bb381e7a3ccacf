"""A real corporate proxy for tests: Debian's squid on loopback, with Basic or NTLM.

``run_squid()`` writes a squid.conf into a fresh directory, starts ``squid -N`` (in
the foreground, as a child process) on a free loopback port, waits until the port
accepts connections, and stops it afterwards. The proxy allows CONNECT to 127.0.0.1
only, to any port, for authenticated users; everything else is denied (403), so no
test traffic can leave the machine.

Squid drops privileges to the ``proxy`` user when started as root, so its directory
and files are made readable and writable for that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SQUID = shutil.which("squid") or shutil.which("squid", path="/usr/sbin:/usr/local/sbin")
HELPERS = Path("/usr/lib/squid")
START_DEADLINE = 30.0  # seconds; squid starts in about one
requires_squid = pytest.mark.skipif(
    SQUID is None, reason="squid is not installed (apt-get install squid); CI installs it"
)

_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
access_log stdio:{dir}/access.log
cache_log {dir}/cache.log
cache_store_log none
coredump_dir {dir}
cache deny all
cache_mem 8 MB
visible_hostname fluidity-test-proxy
pinger_enable off
netdb_filename none
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
{auth}
acl SSL_ports port 1-65535
acl CONNECT method CONNECT
acl loopback_target dst 127.0.0.1/32
acl authenticated proxy_auth REQUIRED
http_access deny !loopback_target
http_access deny CONNECT !SSL_ports
http_access allow authenticated
http_access deny all
"""

_BASIC = """\
auth_param basic program {helpers}/basic_ncsa_auth {dir}/passwd
auth_param basic children 2 startup=1 idle=1
auth_param basic realm fluidity-test
"""

# ntlm_fake_auth runs the real three-message exchange and accepts any credentials.
_NTLM = """\
auth_param ntlm program {helpers}/ntlm_fake_auth
auth_param ntlm children 2 startup=1 idle=1
"""


@dataclass(frozen=True)
class Squid:
    """A running squid: where it listens and what it logged."""

    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        path = self.directory / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""


def apr1_hash(password: str) -> str:
    """An htpasswd-style hash, as ``basic_ncsa_auth`` reads it."""
    result = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return result.stdout.strip()


@contextlib.contextmanager
def run_squid(*, ntlm: bool = False, basic_users: dict[str, str] | None = None) -> Iterator[Squid]:
    """Run squid offering NTLM (if ``ntlm``) and Basic (if ``basic_users``), in that order."""
    if SQUID is None:
        pytest.skip("squid is not installed (apt-get install squid)")
    directory = Path(tempfile.mkdtemp(prefix="fluidity-squid-"))
    try:
        directory.chmod(0o777)  # squid runs as the proxy user
        auth = _write_auth(directory, ntlm, basic_users or {})
        for _attempt in range(3):  # the free port may be taken before squid binds it
            port = _free_port()
            (directory / "squid.conf").write_text(_CONF.format(port=port, dir=directory, auth=auth))
            with _squid_process(directory) as process:
                if _wait_for_port(port, process):
                    yield Squid(port, directory)
                    return
        raise RuntimeError(f"squid did not start; its log:\n{_cache_log(directory)}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _write_auth(directory: Path, ntlm: bool, basic_users: dict[str, str]) -> str:
    parts = [_NTLM.format(helpers=HELPERS)] if ntlm else []
    if basic_users:
        passwd = directory / "passwd"
        passwd.write_text("".join(f"{u}:{apr1_hash(p)}\n" for u, p in basic_users.items()))
        passwd.chmod(0o644)
        parts.append(_BASIC.format(helpers=HELPERS, dir=directory))
    return "".join(parts)


@contextlib.contextmanager
def _squid_process(directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    assert SQUID is not None
    with open(directory / "squid.out", "wb") as output:
        process = subprocess.Popen(
            [SQUID, "-N", "-f", str(directory / "squid.conf")],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> bool:
    """Poll until squid accepts connections; False if it exited or the deadline passed."""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.05)
    return False


def _cache_log(directory: Path) -> str:
    logs = [directory / "cache.log", directory / "squid.out"]
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in logs if p.exists())


def user_is_root() -> bool:
    return os.geteuid() == 0
