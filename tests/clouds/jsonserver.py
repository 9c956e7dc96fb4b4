"""The base of the hand-written cloud fakes: a threaded HTTP server on 127.0.0.1 that routes
requests to methods of a fake, and remembers the calls it answered."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit


class Reply(Exception):
    """Raised by a route to answer with an error status and body."""

    def __init__(self, status: int, body: Any, headers: dict | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class FakeServer:
    """Subclasses list ``routes``: (method, path regex, handler name). A handler gets the
    request (``Request``) and the regex groups and returns (status, body[, headers]) where a body
    that is not bytes is sent as JSON."""

    routes: list[tuple[str, str, str]] = []

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.calls: list[tuple[str, str]] = []
        compiled = [(m, re.compile(p + r"/?$"), getattr(self, h)) for m, p, h in self.routes]
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                req = Request(self.command, split.path, dict(parse_qsl(split.query, keep_blank_values=True)),
                              {k.lower(): v for k, v in self.headers.items()}, body)
                status, payload, headers = fake.dispatch(compiled, req)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                headers.setdefault("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, name=type(self).__name__, daemon=True).start()

    def dispatch(self, compiled: list, req: "Request") -> tuple[int, Any, dict]:
        for method, pattern, handler in compiled:
            match = pattern.match(req.path)
            if match and method == req.method:
                with self.lock:
                    self.calls.append((req.method, req.path))
                    try:
                        out = handler(req, *match.groups())
                    except Reply as r:
                        return r.status, r.body, dict(r.headers)
                status, payload, *rest = out
                return status, payload, dict(rest[0]) if rest else {}
        return 404, {"itemNotFound": {"code": 404, "message": f"no route {req.method} {req.path}"}}, {}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Request:
    def __init__(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> None:
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


