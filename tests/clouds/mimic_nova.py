"""mimic (Rackspace's OpenStack emulator: keystone v2 + nova) as a real child process on loopback,
behind a recording proxy, for the ``openstack`` driver's keystone v2 tests.

mimic 2.2 installs and runs on Python 3.11 (its queue plugin fails to load; identity and nova,
all we use, work). What the proxy adds, in test code:

- **user data**: mimic's nova accepts ``user_data`` at server creation but keeps no copy, so
  nothing could read it back. The proxy records the ``user_data`` of every ``POST .../servers``
  under the server id mimic answers with.
- **the catalog**: mimic builds its catalog URLs from the host name of the request but the port
  of its own socket, so they would bypass the proxy; the proxy points them at itself.
Errors come from mimic's own behaviors API: an ``auth``
behavior "fail" (401 for one user name) and a nova ``creation`` behavior "fail" (nova's 403
``forbidden`` quota message for server names matching a pattern).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.clouds.proxy import LoopbackProxy
from tests.waiting import free_port, wait_for

TENANT = "vmdirac-tenant"
REGION = "ORD"


class MimicNova:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mimic-"))
        twistd = Path(sys.executable).with_name("twistd")
        self.log = open(self.dir / "mimic.log", "wb")
        self.proc = subprocess.Popen([str(twistd), "-n", "--pidfile=", "mimic", "--listen",
                                      f"tcp:{self.port}:interface=127.0.0.1"], cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.mimic_url = f"http://127.0.0.1:{self.port}"
        self.user_data_of: dict[str, bytes] = {}
        self.proxy = LoopbackProxy(self.mimic_url, None, self._response)
        self.url = self.proxy.url
        wait_for(self._up, 60, "mimic to listen", lambda: (self.dir / "mimic.log").read_text(errors="replace"),
                 interval=0.1)
        catalog = self.token("probe", "probe")["access"]["serviceCatalog"]
        self.behaviors = next(e["endpoints"][0]["publicURL"] for e in catalog
                              if e["name"] == "cloudServersBehavior" and e["endpoints"][0]["region"] == REGION)

    def _up(self) -> bool:
        try:
            self.token("probe", "probe")
            return True
        except OSError:
            return self.proc.poll() is not None and (_ for _ in ()).throw(RuntimeError("mimic exited"))

    def _post(self, url: str, body: dict) -> dict:
        req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else {}

    def token(self, user: str, password: str) -> dict:
        return self._post(f"{self.url}/identity/v2.0/tokens", {"auth": {
            "passwordCredentials": {"username": user, "password": password}, "tenantName": TENANT}})

    # ---------------------------------------------------------------- mimic's behaviors

    def reject_user(self, user: str) -> None:
        self._post(f"{self.url}/mimic/v1.1/IdentityControlAPI/behaviors/auth", {
            "criteria": [{"username": user}], "name": "fail", "parameters": {}})

    def quota_for(self, name_regex: str, max_instances: int = 0) -> None:
        self._post(f"{self.behaviors}/behaviors/creation", {
            "criteria": [{"server_name": name_regex}], "name": "fail",
            "parameters": {"code": 403, "type": "forbidden", "message":
                           f"Quota exceeded for instances: Requested 1, but already used {max_instances} "
                           f"of {max_instances} instances"}})

    # ---------------------------------------------------------------- the recording

    def _response(self, method: str, path: str, request_body: bytes, status: int, headers: dict, body: bytes) -> bytes:
        if method == "POST" and path.rstrip("/").endswith("/servers") and 200 <= status < 300:
            spec = json.loads(request_body or b"{}").get("server", {})
            server_id = json.loads(body)["server"]["id"]
            self.user_data_of[server_id] = base64.b64decode(spec.get("user_data") or b"")
        return body.replace(self.mimic_url.encode(), self.url.encode())

    def user_data(self, vm_id: str) -> bytes:
        return self.user_data_of[vm_id]

    def stop(self) -> None:
        self.proxy.stop()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
