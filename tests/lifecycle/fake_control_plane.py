"""A fake control plane: the function URLs' HTTP answers, served on 127.0.0.1 port 0.

Each path has a script of answers; a request takes the next one and the last one
repeats. Every request is recorded (method, path, headers) so a test can check
what the client sent, e.g. its SigV4 headers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, Any]]

STARTING: Answer = (200, {"status": "starting"})
STOPPED: Answer = (200, {"status": "stopped"})
ADDRESS = "203.0.113.7"
READY: Answer = (200, {"status": "ready", "address": ADDRESS})


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FakeControlPlane:
    def __init__(self, scripts: dict[str, list[Answer]]) -> None:
        self.scripts = {path: list(answers) for path, answers in scripts.items()}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def calls(self) -> list[str]:
        with self._lock:
            return [f"{s.method} {s.path}" for s in self.seen]

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        with self._lock:
            self.seen.append(Seen(method, path, headers))
            script = self.scripts.get(path)
            if not script:
                return 404, {"Message": "Not Found"}
            return script.pop(0) if len(script) > 1 else script[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._reply()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._reply()

            def _reply(self) -> None:
                status, body = plane.answer(self.command, self.path, dict(self.headers.items()))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler

    @contextmanager
    def running(self) -> Iterator[FakeControlPlane]:
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)
