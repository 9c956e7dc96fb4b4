"""The local cloud: each VM is a process group on this machine, in a directory of its own.

``boot`` makes ``<state_dir>/<vm_id>/`` (``vm_id`` a UUID) with the user data and ``node.json``
(name, endpoint, tags, pid, pgid, start time), then starts ``python -m vmdirac.drivers.local_vm
<dir>`` as the leader of a new session: it runs the user data as cloud-init would (see
``local_vm``) and lives until the VM halts itself or is terminated. Everything is on disk and
in ``/proc``, so ``status``, ``list_nodes`` and ``terminate`` work from any process (the
scheduler boots, the reconciler lists and terminates), and a VM's directory stays after its end
for its logs.

Driver options (``Resources/Sites/<Site>/Cloud/<Endpoint>/Driver``): ``Python`` (the
interpreter VMs run; default this one), ``KillGrace`` (seconds from SIGTERM to SIGKILL),
``MaxCores`` (a cap on the cores of running VMs), ``Environment`` (extra variables for the VMs).
A VM gets a clean environment: nothing of the server's (database URL, credentials) leaks into it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar, Iterator

from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, BadConfiguration, BootRequest, Driver, Limits, Node, NodeNotFound, NodeState,
)
from vmdirac.drivers.local_vm import (
    BOOT_LOCK, HALT_FILE, HALTED_FILE, NODE_FILE, USER_DATA, process_table, start_ticks, vm_processes, write_node,
)
from vmdirac.vm.config import Endpoint

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 60.0     # seconds a VM may stay recorded without a process before it counts as gone
PASSED_ENV = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


class LocalDriver(Driver):
    # Popen objects of the VMs this process started: reaped here, so no zombie keeps a group alive.
    _children: ClassVar[dict[int, subprocess.Popen]] = {}
    _children_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, endpoint: Endpoint, deployment: str, state_dir: Path) -> None:
        super().__init__(endpoint, deployment, Path(state_dir))
        extra = dict(endpoint.options.Driver or {})
        try:
            self.python = str(extra.get("Python") or sys.executable)
            self.kill_grace = float(extra.get("KillGrace", 5.0))
            self.max_cores = int(extra["MaxCores"]) if extra.get("MaxCores") else None
            self.environment = {str(k): str(v) for k, v in (extra.get("Environment") or {}).items()}
        except (TypeError, ValueError) as e:
            raise BadConfiguration(f"endpoint {endpoint.name}: bad local driver option: {e}") from e
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "names").mkdir(exist_ok=True)

    # ------------------------------------------------------------ the standard API

    def boot(self, request: BootRequest) -> Node:
        with self._boot_lock():
            known = self._vm_id_of(request.instance_name)
            if known and (self.state_dir / known / NODE_FILE).exists():
                log.info("boot of %s: already VM %s", request.instance_name, known)
                return self.status(known)
            vm_id = uuid.uuid4().hex
            vm_dir = self.state_dir / vm_id
            (vm_dir / "logs").mkdir(parents=True)
            user_data = vm_dir / USER_DATA
            fd = os.open(user_data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # it holds a credential
            with os.fdopen(fd, "wb") as fh:
                fh.write(request.user_data)
            tags = {**request.tags, DEPLOYMENT_TAG: self.deployment, INSTANCE_TAG: request.instance_name}
            record = {"vm_id": vm_id, "name": request.instance_name, "endpoint": self.endpoint.name,
                      "deployment": self.deployment, "image": request.image.ImageID, "cores": request.image.Cores,
                      "tags": tags, "state": "pending", "pid": None, "pgid": None, "start_ticks": None,
                      "created": _now()}
            self._write(vm_id, record)
            (self.state_dir / "names" / _name_key(request.instance_name)).write_text(vm_id)
            proc = self._start(vm_dir)
            record.update(state="running", pid=proc.pid, pgid=proc.pid, start_ticks=start_ticks(proc.pid),
                          started=_now())
            self._write(vm_id, record)
        log.info("booted %s as local VM %s (pid %d) in %s", request.instance_name, vm_id, proc.pid, vm_dir)
        return self._to_node(record, NodeState.RUNNING)

    def status(self, vm_id: str) -> Node:
        record = self._read(vm_id)
        return self._to_node(record, self._state(record, process_table()))

    def terminate(self, vm_id: str) -> None:
        try:
            record = self._read(vm_id)
        except NodeNotFound:
            return
        pid = record.get("pid")
        if not pid:
            return
        if self._leader_alive(record):
            # The VM's init ends its own processes (it is their subreaper and reaps them all).
            # A frozen VM (SIGSTOP) would hold SIGTERM pending until killed: wake it to act on it.
            _signal(pid, signal.SIGTERM)
            _signal(pid, signal.SIGCONT)
            self._wait(lambda: not self._leader_alive(record), self.kill_grace + 5.0)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self._processes(record, thorough=True)
            if not left:
                break
            for proc in left:
                _signal(proc.pid, sig)
                if sig == signal.SIGTERM:
                    _signal(proc.pid, signal.SIGCONT)
            self._wait(lambda: not self._processes(record, thorough=True), self.kill_grace)
        self._reap(pid, timeout=5.0)
        left = self._processes(record, thorough=True)
        if left:
            log.error("local VM %s: processes %s survive SIGKILL", vm_id, [p.pid for p in left])
        record.update(state="terminated", terminated=_now())
        self._write(vm_id, record)
        log.info("terminated local VM %s (%s)", vm_id, record.get("name"))

    def list_nodes(self) -> list[Node]:
        table = process_table()
        nodes = []
        for record in self._records():
            if record.get("tags", {}).get(DEPLOYMENT_TAG) != self.deployment:
                continue
            state = self._state(record, table)
            if state not in (NodeState.TERMINATED, NodeState.UNKNOWN):
                nodes.append(self._to_node(record, state))
        return nodes

    def limits(self) -> Limits:
        nodes = self.list_nodes()
        used_cores = sum(int(self._read(n.vm_id).get("cores") or 1) for n in nodes) if self.max_cores else None
        return Limits(max_instances=self.endpoint.options.MaxInstances, used_instances=len(nodes),
                      max_cores=self.max_cores, used_cores=used_cores)

    # ------------------------------------------------------------ extensions

    def vm_dir(self, vm_id: str) -> Path:
        self._read(vm_id)
        return self.state_dir / vm_id

    def user_data(self, vm_id: str) -> bytes:
        """The user data the VM was booted with, as it reads it."""
        return (self.vm_dir(vm_id) / USER_DATA).read_bytes()

    def leader_pid(self, vm_id: str) -> int | None:
        """The pid (and process group id) of the VM's init process."""
        return self._read(vm_id).get("pid")

    # ------------------------------------------------------------ private

    def _start(self, vm_dir: Path) -> subprocess.Popen:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ} | self.environment
        # Our commands (dirac-vm-monitor, dirac-pilot) are installed beside the interpreter.
        env["PATH"] = os.pathsep.join(filter(None, (str(Path(self.python).parent), env.get("PATH", os.defpath))))
        with open(vm_dir / "logs" / "console.log", "ab") as console:
            proc = subprocess.Popen([self.python, "-m", "vmdirac.drivers.local_vm", str(vm_dir)], cwd=vm_dir,
                                    env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        with self._children_lock:
            self._children[proc.pid] = proc
        threading.Thread(target=self._reaper, args=(proc,), name=f"local-vm-{proc.pid}", daemon=True).start()
        return proc

    @classmethod
    def _reaper(cls, proc: subprocess.Popen) -> None:
        proc.wait()
        with cls._children_lock:
            cls._children.pop(proc.pid, None)

    def _reap(self, pid: int, timeout: float) -> None:
        with self._children_lock:
            proc = self._children.get(pid)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)

    def _leader_alive(self, record: dict) -> bool:
        pid = record.get("pid")
        return bool(pid) and start_ticks(pid) == record.get("start_ticks")

    def _processes(self, record: dict, table: dict | None = None, thorough: bool = False) -> list:
        """The VM's live processes: its init's tree and process group; ``thorough`` also looks for
        processes marked with its id that left the tree (its init was killed first). None when
        the init's pid now belongs to another process."""
        pid = record.get("pid")
        if not pid:
            return []
        table = process_table() if table is None else table
        leader = table.get(pid)
        if leader is not None and not leader.zombie and leader.start_ticks != record.get("start_ticks"):
            return vm_processes(-1, record["vm_id"], table) if thorough else []
        return vm_processes(pid, record["vm_id"] if thorough else "", table)

    def _state(self, record: dict, table: dict) -> NodeState:
        if not record.get("pid"):
            # Recorded, not yet started: a boot in progress, or one that died between the two writes.
            created = dt.datetime.fromisoformat(record.get("created") or "1970-01-01T00:00:00+00:00")
            recent = dt.datetime.now(dt.timezone.utc) - created < dt.timedelta(seconds=BOOT_TIMEOUT)
            return NodeState.PENDING if recent and record.get("state") == "pending" else NodeState.TERMINATED
        if not self._processes(record, table):
            return NodeState.TERMINATED
        vm_dir = self.state_dir / record["vm_id"]
        if (vm_dir / HALT_FILE).exists() or (vm_dir / HALTED_FILE).exists() or record.get("state") == "terminated":
            return NodeState.STOPPING
        return NodeState.RUNNING

    def _to_node(self, record: dict, state: NodeState) -> Node:
        return Node(vm_id=record["vm_id"], name=record["name"], state=state, public_ips=(),
                    private_ips=("127.0.0.1",), tags=dict(record.get("tags", {})))

    def _records(self) -> Iterator[dict]:
        for entry in self.state_dir.iterdir():
            path = entry / NODE_FILE
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("endpoint") == self.endpoint.name:
                yield record

    def _read(self, vm_id: str) -> dict:
        if not re.fullmatch(r"[0-9a-f]{32}", vm_id or ""):
            raise NodeNotFound(f"local VM {vm_id!r}: not a local VM id", vm_id=vm_id)
        try:
            record = json.loads((self.state_dir / vm_id / NODE_FILE).read_text())
        except FileNotFoundError:
            raise NodeNotFound(f"local VM {vm_id} does not exist in {self.state_dir}", vm_id=vm_id) from None
        except (OSError, ValueError) as e:
            raise NodeNotFound(f"local VM {vm_id}: unreadable {NODE_FILE}: {e}", vm_id=vm_id) from e
        if record.get("endpoint") != self.endpoint.name:
            raise NodeNotFound(f"local VM {vm_id} belongs to endpoint {record.get('endpoint')}", vm_id=vm_id)
        return record

    def _write(self, vm_id: str, record: dict) -> None:
        write_node(self.state_dir / vm_id, record)

    def _vm_id_of(self, name: str) -> str | None:
        try:
            return (self.state_dir / "names" / _name_key(name)).read_text().strip() or None
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _boot_lock(self) -> Iterator[None]:
        """Boots are serialised across processes, so two retries of one boot find one VM."""
        with open(self.state_dir / BOOT_LOCK, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _wait(done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _name_key(name: str) -> str:
    return name if _SAFE_NAME.match(name) else hashlib.sha256(name.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
