"""mitmproxy as a real TLS-inspecting corporate proxy on loopback.

mitmproxy pins older h2, h11 and cryptography than Fluidity, so it lives in a
virtualenv of its own (``.venv-mitmproxy`` at the repository root, made by
``scripts/test`` or, failing that, by the ``mitmdump`` fixture on first use), and
runs as a subprocess: ``mitmdump`` in regular (HTTP proxy) mode, with a fresh
confdir (its CA is generated there on first start) and a flow dump (``-w``). The
dump is read back by mitmproxy's own interpreter into a JSON summary.

``FLUIDITY_MITMDUMP`` may name another ``mitmdump`` to use.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv-mitmproxy"
REQUIREMENT = "mitmproxy>=11,<13"
START_TIMEOUT = 30.0

# Run by mitmproxy's interpreter: the dump as JSON, one object per flow.
SUMMARY = r"""
import json, sys
from mitmproxy import io, http, tcp
out = []
with open(sys.argv[1], "rb") as f:
    for flow in io.FlowReader(f).stream():
        item = {"kind": type(flow).__name__}
        if isinstance(flow, http.HTTPFlow):
            item["request"] = f"{flow.request.method} {flow.request.path}"
            item["status"] = flow.response.status_code if flow.response else None
            item["request_body"] = len(flow.request.raw_content or b"")
            if flow.websocket is not None:
                item["messages"] = [
                    {"type": m.type.name, "size": len(m.content), "from_client": m.from_client}
                    for m in flow.websocket.messages
                ]
        elif isinstance(flow, tcp.TCPFlow):
            item["messages"] = [{"size": len(m.content)} for m in flow.messages]
        out.append(item)
json.dump(out, sys.stdout)
"""


def find_or_install_mitmdump() -> tuple[Path | None, str]:
    """The mitmdump to use, installing it into ``.venv-mitmproxy`` if needed; or
    (None, why) when that cannot be done."""
    named = os.environ.get("FLUIDITY_MITMDUMP") or shutil.which("mitmdump")
    if named:
        return Path(named), ""
    mitmdump = VENV / "bin" / "mitmdump"
    if mitmdump.exists():
        return mitmdump, ""
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", REQUIREMENT],
            check=True,
            timeout=600,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(VENV, ignore_errors=True)
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"cannot install {REQUIREMENT} into {VENV}: {exc} {detail[-300:]!r}"
    return mitmdump, ""


def interpreter_of(script: Path) -> str:
    """The Python that runs a console script: its shebang."""
    first = script.read_bytes().split(b"\n", 1)[0]
    return first[2:].decode().strip() if first.startswith(b"#!") else sys.executable


@dataclass
class Mitmdump:
    """One ``mitmdump`` process in regular proxy mode on a free loopback port."""

    executable: Path
    workdir: Path
    upstream_ca: Path
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None
    summary: list[dict[str, object]] = field(default_factory=list)

    @property
    def confdir(self) -> Path:
        return self.workdir / "confdir"

    @property
    def ca_cert(self) -> Path:
        """The CA mitmproxy forges certificates with (generated on first start)."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def dump(self) -> Path:
        return self.workdir / "flows.mitm"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mitmdump.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Mitmdump:
        """Start it and wait (bounded) until it accepts connections; a port taken
        between choosing and binding is retried with another."""
        self.confdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.port = _free_port()
            self.popen = self._spawn()
            if self._wait_listening():
                return self
        raise AssertionError(f"mitmdump did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        """Stop it (flushing the dump) and read the dump's summary."""
        if self.popen is None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
        self.popen = None
        if self.dump.exists() and self.dump.stat().st_size:
            done = subprocess.run(
                [interpreter_of(self.executable), "-c", SUMMARY, str(self.dump)],
                capture_output=True,
                timeout=60,
                check=True,
            )
            self.summary = json.loads(done.stdout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [
            str(self.executable),
            "--listen-host", "127.0.0.1",
            "--listen-port", str(self.port),
            "--set", f"confdir={self.confdir}",
            # mitmproxy verifies the servers it connects to, like a corporate proxy
            # does; the Fluidity server's certificate comes from the private CA.
            "--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}",
            "--set", "flow_detail=2",
            "-w", str(self.dump),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def _wait_listening(self) -> bool:
        assert self.popen is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)  # polling another process's listening socket
                continue
            return self.ca_cert.exists()
        self.popen.kill()
        self.popen.wait(timeout=10)
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
