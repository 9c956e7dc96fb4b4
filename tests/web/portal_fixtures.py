"""A vmdirac-server child process serving the job services and the web portal, and an HTTPS
client that behaves like a browser where it matters (cookies, CSRF token from the page)."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.conftest import base_tree, command
from tests.processes import ServerProcess
from tests.services.wms_fixtures import wms_tree
from tests.waiting import free_port, wait_for
from vmdirac.core.config import deep_merge

SERVICES = ["JobManager", "JobMonitoring", "JobStateUpdate", "Matcher", "SandboxStore", "VirtualMachineManager"]
_PORTAL_LINE = re.compile(r"portal on https://[^:]+:(\d+)/")


def portal_tree(port: int, extra: dict | None = None) -> dict:
    base = f"https://localhost:{port}"
    tree = deep_merge(base_tree(), wms_tree(MaxParametricJobs=100))
    tree = deep_merge(tree, {"Systems": {
        "Configuration": {"URLs": {"Server": [f"{base}/Configuration/Server"]}},
        "WorkloadManagement": {"Services": {"VirtualMachineManager": {}},
                               "URLs": {s: [f"{base}/WorkloadManagement/{s}"] for s in SERVICES}}}})
    return deep_merge(tree, extra or {})


class PortalServer(ServerProcess):
    """The server with ``--web-port 0``; ``web_port`` is read from its ``portal on ...`` line."""

    def __init__(self, pki, root: Path, db_url: str, tree: Callable[[int], dict] = portal_tree,
                 args: tuple[str, ...] = ("--no-agents",)) -> None:
        port = free_port()
        super().__init__(pki, root, tree(port), db_url, args=(*args, "--web-port", "0"), port=port)
        self.db_url = db_url
        self.root = root
        match = wait_for(lambda: next((m for m in map(_PORTAL_LINE.search, list(self.output)) if m), None),
                         30, "the portal line", lambda: "".join(self.output))
        self.web_port = int(match.group(1))
        self.client_config = root / "client.yaml"
        self.client_config.write_text(yaml.safe_dump({
            "ConfigurationServer": [self.url("Configuration/Server")], "CACertificates": str(pki.ca_dir),
            "CacheDir": str(root / "client-cache")}))

    @property
    def web_url(self) -> str:
        return f"https://localhost:{self.web_port}/"

    def login_link(self, proxy: str = "alice-proxy") -> str:
        """What ``dirac-web-login`` prints, run as the user with ``proxy``."""
        env = {"PATH": "/usr/bin:/bin", "VMDIRAC_CLIENT_CONFIG": str(self.client_config),
               "X509_USER_PROXY": self.pki.path(proxy), "HOME": str(self.root)}
        done = subprocess.run([command("dirac-web-login"), "--url", self.web_url], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"dirac-web-login failed: {done.stderr}"
        return done.stdout.splitlines()[0].strip()

    def browser(self, cert: str | None = None, key: str | None = None) -> "WebClient":
        return WebClient(self.pki, self.web_port, cert, key)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


@dataclass
class WebClient:
    """HTTPS to the portal with a cookie jar (a browser's rules are simple for one host)."""

    pki: Any
    port: int
    cert: str | None = None
    key: str | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_dir / "ca.pem"))
        if self.cert:
            ctx.load_cert_chain(self.pki.path(self.cert), self.pki.path(self.key) if self.key else None)
        return ctx

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Response:
        conn = http.client.HTTPSConnection("localhost", self.port, timeout=60, context=self._context())
        try:
            hdrs = dict(headers or {})
            if self.cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body, hdrs)
            resp = conn.getresponse()
            out = Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        for header in out.headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if morsel["expires"] and "1970" in morsel["expires"] or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return out

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post_json(self, path: str, data: dict, csrf: str | None = None) -> Response:
        headers = {"Content-Type": "application/json"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.request("POST", path, json.dumps(data).encode(), headers)

    def follow(self, link: str) -> Response:
        parts = urllib.parse.urlsplit(link)
        return self.get(f"{parts.path}?{parts.query}")

    def csrf(self) -> str:
        page = self.get("/jobs")
        assert page.status == 200, page.text
        match = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
        assert match, "no CSRF token in the page"
        return match.group(1)


def portal_tree_all(port: int) -> dict:
    """``portal_tree`` plus the services behind the Accounting and Proxy upload pages."""
    base = f"https://localhost:{port}"
    return deep_merge(portal_tree(port), {"Systems": {
        "Accounting": {"Services": {"DataStore": {}}, "URLs": {"DataStore": [f"{base}/Accounting/DataStore"]}},
        "Framework": {"Services": {"ProxyManager": {}}, "URLs": {"ProxyManager": [f"{base}/Framework/ProxyManager"]}},
    }})


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "vmdirac-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
