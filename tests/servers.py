"""A real vmdirac HTTPS server running in a thread of the test process, on a free port."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from vmdirac.core.client import ClientCredentials, RPCClient
from vmdirac.core.config import options
from vmdirac.core.launcher import LocalOptions, Paths, make_context, make_services
from vmdirac.core.server import RPCServer
from vmdirac.core.tls import server_context


class ThreadServer:
    def __init__(self, pki, root: Path, db_url: str, services: list[str], tree: dict, local: dict) -> None:
        self.pki = pki
        self.tree = dict(tree)
        local_section = {"DatabaseURL": db_url, "HostCert": pki.path("hostcert.pem"),
                         "HostKey": pki.path("hostkey.pem"), "CACertificates": str(pki.ca_dir),
                         "Port": 0, **local}
        self.local = options(LocalOptions, local_section, "Local")
        self.context = make_context(self.tree, self.local, Paths(root))
        self.services = make_services(self.context, services)
        self.loop = asyncio.new_event_loop()
        self.rpc: RPCServer | None = None
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)

    def start(self) -> None:
        ctx = server_context(self.local.HostCert, self.local.HostKey, self.local.CACertificates)
        self._thread.start()

        async def listen() -> int:
            self.rpc = RPCServer(self.services, self.context.config, ctx, self.local.MaxWorkers,
                                 self.local.MaxBodyBytes)
            return self.rpc.listen(0, "127.0.0.1")

        self.port = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)

    def url(self, service: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}/{service}"

    def client(self, service: str, cred: str = "alice-proxy", key: str | None = None, **kwargs) -> RPCClient:
        creds = ClientCredentials(self.pki.path(cred), self.pki.path(key) if key else None, str(self.pki.ca_dir),
                                  **{k: kwargs.pop(k) for k in ("use_host", "delegate") if k in kwargs})
        return RPCClient(service, creds, urls=[self.url(service)], **kwargs)

    def stop(self, grace: float = 5.0) -> None:
        if self.rpc is not None:
            asyncio.run_coroutine_threadsafe(self.rpc.stop(grace), self.loop).result(grace + 10)
            self.rpc = None
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.context.engine.dispose()
