"""A small loopback HTTP proxy for tests: forwards each request to an emulator and lets the
harness repair or observe what passes (see ``moto_ec2`` and ``mimic_nova`` for what each repairs)."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

# (method, path with query, headers, body) -> the same, changed; or an answer (status, headers, body).
RequestHook = Callable[[str, str, dict, bytes], "tuple[str, str, dict, bytes] | tuple[int, dict, bytes]"]
ResponseHook = Callable[[str, str, bytes, int, dict, bytes], bytes]


class LoopbackProxy:
    def __init__(self, upstream: str, on_request: RequestHook | None = None,
                 on_response: ResponseHook | None = None) -> None:
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port
        self.on_request = on_request or (lambda m, p, h, b: (m, p, h, b))
        self.on_response = on_response or (lambda m, p, rb, s, h, b: b)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:   # quiet: pytest shows failures
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                changed = proxy.on_request(self.command, self.path, headers, body)
                if isinstance(changed[0], int):           # the hook answers itself
                    status, out_headers, out = changed
                else:
                    method, path, headers, body = changed
                    headers["Content-Length"] = str(len(body))
                    conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                    try:
                        conn.request(method, path, body=body or None, headers=headers)
                        resp = conn.getresponse()
                        status, raw = resp.status, resp.read()
                        out_headers = {k: v for k, v in resp.getheaders()
                                       if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                        out = proxy.on_response(method, path, body, status, out_headers, raw)
                    except OSError as e:   # the emulator is not up (yet): what a gateway says
                        status, out_headers, out = 502, {"Content-Type": "text/plain"}, str(e).encode()
                    finally:
                        conn.close()
                self.send_response(status)
                for k, v in out_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="loopback-proxy", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
