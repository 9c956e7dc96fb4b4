"""The portal's way to the services: the RPC client, with the host certificate acting for the user.

Every call carries DIRAC's ``extraCredentials = [DN, group]``; the host is a TrustedHost, so the
service treats the call as the user's own and applies the very checks it applies to their
commands. The portal itself never reads jobs or VMs from the DB: what a user sees in a page is
what the RPC layer answers them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

from vmdirac.core.client import ClientCredentials, RPCClient
from vmdirac.core.config import ConfigStore
from vmdirac.web.auth import WebUser

JOB_MANAGER = "WorkloadManagement/JobManager"
JOB_MONITORING = "WorkloadManagement/JobMonitoring"
SANDBOX_STORE = "WorkloadManagement/SandboxStore"
VM_MANAGER = "WorkloadManagement/VirtualMachineManager"
MATCHER = "WorkloadManagement/Matcher"
PROXY_MANAGER = "Framework/ProxyManager"
ACCOUNTING = "Accounting/DataStore"


class Backend:
    """RPC clients per (service, user, group), kept so their kept-alive connections are reused."""

    def __init__(self, config: ConfigStore, host: ClientCredentials, max_clients: int = 256,
                 timeout: float = 120.0) -> None:
        self.config = config
        self.timeout = timeout
        # One TLS context (the host certificate) for every user's credentials: loading it is the
        # expensive part, and what differs per user is only the extraCredentials field. Copies
        # made with dataclasses.replace share this cache dict.
        self._host = dataclasses.replace(host, use_host=False, delegate=None, _ctx={})
        self._clients: OrderedDict[tuple[str, str, str], RPCClient] = OrderedDict()
        self._max = max_clients
        self._lock = threading.Lock()

    def credentials(self, user: WebUser) -> ClientCredentials:
        return dataclasses.replace(self._host, delegate=(user.dn, user.group))

    def client(self, user: WebUser, service: str) -> RPCClient:
        key = (service, user.dn, user.group)
        with self._lock:
            found = self._clients.get(key)
            if found is not None:
                self._clients.move_to_end(key)
                return found
            found = RPCClient(service, self.credentials(user), config=self.config, timeout=self.timeout,
                              rounds=1)
            self._clients[key] = found
            if len(self._clients) > self._max:
                _, old = self._clients.popitem(last=False)
                old.close()
            return found

    def call(self, user: WebUser, service: str, method: str, *args: Any) -> Any:
        return self.client(user, service).call(method, *args)

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()
