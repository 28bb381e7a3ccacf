"""Origins for real tools: a git smart-HTTP server (``git http-backend`` as CGI) and a
package index over HTTPS with one wheel. Both are threaded ``http.server``s on loopback."""

from __future__ import annotations

import contextlib
import http.server
import io
import ssl
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}


def make_bare_repo(root: Path, content: str) -> Path:
    """``root/repo.git``: a bare repository whose one commit holds README = ``content``."""
    work = root / "work"
    work.mkdir(parents=True)
    (work / "README").write_text(content)
    env = {**GIT_ENV, "HOME": str(root), "PATH": _path()}
    for args in (["init", "-q", "-b", "main"], ["add", "README"], ["commit", "-qm", "one"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, timeout=30)
    bare = root / "repo.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(work), str(bare)], env=env, check=True, timeout=30
    )
    return bare


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")


class _GitCGI(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def do_GET(self) -> None:
        self._backend()

    def do_POST(self) -> None:
        self._backend()

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows failures without the access log

    def _backend(self) -> None:
        path, _, query = self.path.partition("?")
        body = self._body()
        env = {
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": LOOPBACK,
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "PATH": _path(),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=30
        )
        separator = b"\r\n\r\n" if b"\r\n\r\n" in done.stdout else b"\n\n"
        head, _, payload = done.stdout.partition(separator)
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class _Index(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    files: dict[str, tuple[bytes, str]]

    def do_GET(self) -> None:
        found = self.files.get(self.path)
        if found is None:
            self.send_error(404)
            return
        body, content_type = found
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def make_wheel(name: str, version: str) -> tuple[str, bytes]:
    """A minimal valid pure-Python wheel: its file name and bytes."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": b"VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: fluidity-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", record)
    return f"{module}-{version}-py3-none-any.whl", buffer.getvalue()


@contextlib.contextmanager
def serving(server: http.server.ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def git_origin(root: Path) -> Iterator[int]:
    """A smart-HTTP git server for the repositories in ``root``; yields its port."""
    handler = type("GitCGI", (_GitCGI,), {"root": root})
    with serving(http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)) as port:
        yield port


@contextlib.contextmanager
def package_index(cert: Path, key: Path, name: str, version: str) -> Iterator[int]:
    """A simple-API index over HTTPS (``cert``/``key``) holding one wheel of ``name``."""
    wheel, data = make_wheel(name, version)
    page = f'<html><body><a href="/files/{wheel}">{wheel}</a></body></html>'.encode()
    files = {f"/simple/{name}/": (page, "text/html"), f"/files/{wheel}": (data, "application/zip")}
    handler = type("Index", (_Index,), {"files": files})
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server) as port:
        yield port
