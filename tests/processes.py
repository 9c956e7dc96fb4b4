"""vmdirac servers as real child processes, configured from a tree, on a port they choose."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import yaml

from tests.conftest import ROOT, command
from vmdirac.core.client import ClientCredentials, RPCClient
from tests.waiting import free_port



class ServerProcess:
    def __init__(self, pki, root: Path, tree: dict, db_url: str, args: tuple[str, ...] = ("--no-agents",),
                 port: int = 0) -> None:
        self.pki = pki
        root.mkdir(parents=True, exist_ok=True)
        tree = dict(tree)
        tree["Local"] = {"DatabaseURL": db_url, "HostCert": pki.path("hostcert.pem"),
                         "HostKey": pki.path("hostkey.pem"), "CACertificates": str(pki.ca_dir),
                         "Host": "127.0.0.1", **tree.get("Local", {})}
        self.config = root / "server.yaml"
        self.config.write_text(yaml.safe_dump(tree))
        env = {k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"}
        env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen([command("vmdirac-server"), "--root", str(root), "-c", str(self.config),
                                      "--port", str(port), *args], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.port = 0
        for line in self.proc.stdout:
            self.output.append(line)
            match = re.search(r"serving .* on https://[^:]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        if not self.port:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True).start()

    def url(self, service: str) -> str:
        return f"https://localhost:{self.port}/{service}"

    def client(self, service: str, cred: str = "alice-proxy", key: str | None = None, **kwargs) -> RPCClient:
        creds = ClientCredentials(self.pki.path(cred), self.pki.path(key) if key else None, str(self.pki.ca_dir),
                                  **{k: kwargs.pop(k) for k in ("use_host", "delegate") if k in kwargs})
        return RPCClient(service, creds, urls=[self.url(service)], **kwargs)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
