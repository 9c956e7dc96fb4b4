"""The process that plays a VM of the local cloud: ``python -m vmdirac.drivers.local_vm <dir>``.

It does what cloud-init does on a cloud VM, inside ``<dir>`` and never outside it:

1. reads ``<dir>/user-data`` (``contexts.cloudinit.parse_user_data``);
2. writes each ``write_files`` entry under ``<dir>/root`` (``/etc/x`` -> ``<dir>/root/etc/x``; a
   path escaping the root is refused);
3. runs the shell-script parts in order, cwd ``<dir>``, logs in ``<dir>/logs/``, with
   ``VMDIRAC_VM_ROOT`` (the root above), ``VMDIRAC_HALT_FILE``, ``VMDIRAC_VM_ID``,
   ``VMDIRAC_VM_PID`` (this process), ``VMDIRAC_VM_STARTED``, ``VMDIRAC_INSTANCE_NAME`` and the
   instance tags (``VMDIRAC_TAGS``, JSON) in their environment; ``HOME`` and ``TMPDIR`` point
   inside the root;
4. lives until the halt file appears (the VM Monitor halting the VM) or SIGTERM (the driver
   terminating it); then it ends every process of the VM (SIGTERM, SIGKILL after a grace),
   writes ``<dir>/halted`` and exits.

The VM's processes: this process leads its own session and process group, and is a *child
subreaper* (``PR_SET_CHILD_SUBREAPER``): whatever its scripts start, even daemons and payloads
in sessions of their own, stays in its process tree, is reaped by it, and is found by
``vm_processes`` (the tree, the process group, and anything carrying ``VMDIRAC_VM_ID=<id>`` in its
environment in case this process was killed first). That tree is also what the VM's load is
measured on (``vm_cpu_seconds``): on one machine ``/proc/loadavg`` is shared by every local VM.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmdirac.contexts.cloudinit import file_content, parse_user_data

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
TICKS = os.sysconf("SC_CLK_TCK")
HALT_FILE = "halt"          # what the monitor touches to halt the VM
HALTED_FILE = "halted"      # written on the way out: why and when
USER_DATA = "user-data"
NODE_FILE = "node.json"
BOOT_LOCK = ".boot.lock"     # in the endpoint's state directory: boots hold it
KILL_GRACE = 3.0            # seconds between SIGTERM and SIGKILL of the VM's processes
POLL = 0.1                  # seconds between checks of the halt file


# ---------------------------------------------------------------- the process table

@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    state: str
    start_ticks: int
    own_cpu: float         # utime + stime, s
    children_cpu: float    # cutime + cstime (reaped children), s

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def read_proc(pid: int) -> Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = text[text.rfind(")") + 2:].split()
    try:
        f = lambda n: int(rest[n - 3])  # noqa: E731  (n: the 1-based field number of proc(5))
        return Proc(pid, f(4), f(5), rest[0], f(22), (f(14) + f(15)) / TICKS, (f(16) + f(17)) / TICKS)
    except (IndexError, ValueError):
        return None


def process_table() -> dict[int, Proc]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = read_proc(int(entry))
            if proc is not None:
                table[proc.pid] = proc
    return table


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def vm_processes(leader: int, vm_id: str = "", table: dict[int, Proc] | None = None,
                 include_zombies: bool = False) -> list[Proc]:
    """The processes of the VM led by ``leader``: its tree, its process group, and (with
    ``vm_id``) anything whose environment carries ``VMDIRAC_VM_ID=<vm_id>``."""
    table = process_table() if table is None else table
    members = {p.pid for p in table.values() if p.pgrp == leader}
    if leader in table:
        members.add(leader)
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    if vm_id:
        marker = f"VMDIRAC_VM_ID={vm_id}".encode()
        members |= {p.pid for p in table.values() if p.pid not in members and p.pid != os.getpid()
                    and _has_marker(p.pid, marker)}
    return [table[pid] for pid in sorted(members) if include_zombies or not table[pid].zombie]


def vm_cpu_seconds(leader: int, exclude_own: tuple[int, ...] = ()) -> float:
    """CPU seconds used so far by the VM's processes (reaped children included through their
    parents' ``cutime``). ``exclude_own``: processes whose own time is not work (the VM's init and
    the monitor measuring); what they reaped still counts."""
    total = 0.0
    for p in vm_processes(leader):
        total += p.children_cpu + (0.0 if p.pid in exclude_own else p.own_cpu)
    return total


def write_node(vm_dir: Path, record: dict) -> None:
    """Replace ``node.json`` atomically (readers in other processes never see half of it)."""
    path = vm_dir / NODE_FILE
    tmp = path.with_name(f"{NODE_FILE}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def start_ticks(pid: int) -> int | None:
    proc = read_proc(pid)
    return None if proc is None or proc.zombie else proc.start_ticks


# ---------------------------------------------------------------- the VM

def set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


class LocalVM:
    def __init__(self, vm_dir: Path, kill_grace: float = KILL_GRACE) -> None:
        self.dir = vm_dir.resolve()
        self.root = self.dir / "root"
        self.logs = self.dir / "logs"
        self.halt_file = self.dir / HALT_FILE
        self.kill_grace = kill_grace
        self.node = self.record_self()
        self.vm_id = str(self.node["vm_id"])
        self.terminated = False
        self.started = time.time()

    def record_self(self) -> dict:
        """The booting driver writes this VM's pid once it has started it; had the booting process
        died before that write, the VM writes it here, so that it is never left running with a
        pid-less record (which the driver takes for a boot that failed, and so would never end).
        The driver holds the boot lock until its own write: wait for it, then look."""
        with open(self.dir.parent / BOOT_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                node = json.loads((self.dir / NODE_FILE).read_text())
                if not node.get("pid"):
                    me = os.getpid()
                    node.update(state="running", pid=me, pgid=os.getpgid(0), start_ticks=start_ticks(me),
                                started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
                    write_node(self.dir, node)
                    log.warning("VM %s recorded its own pid %d: the boot that started it ended first",
                                node.get("vm_id"), me)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return node

    # ------------------------------------------------------------ cloud-init's work

    def write_files(self, config: dict) -> None:
        for entry in config.get("write_files") or []:
            target = self.vm_file(str(entry["path"]))
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = int(str(entry.get("permissions", "0644")), 8)
            data = file_content(entry)
            if entry.get("append"):
                with open(target, "ab") as fh:
                    fh.write(data)
            else:
                tmp = target.with_name(target.name + ".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target)
            os.chmod(target, mode)
            log.info("wrote %s (%d B, mode %o)", target, len(data), mode)

    def vm_file(self, path: str) -> Path:
        """A VM path mapped into the VM's root; refuses anything that would land outside it."""
        if not path.startswith("/"):
            path = "/" + path
        target = Path(os.path.normpath(self.root / path.lstrip("/")))
        if not target.is_relative_to(self.root):
            raise ValueError(f"write_files path {path!r} escapes the VM")
        return target

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        home, tmp = self.root / "root", self.root / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        tags = self.node.get("tags", {})
        env.update({"VMDIRAC_VM_ROOT": str(self.root), "VMDIRAC_HALT_FILE": str(self.halt_file),
                    "VMDIRAC_VM_ID": self.vm_id, "VMDIRAC_VM_PID": str(os.getpid()),
                    "VMDIRAC_VM_STARTED": f"{self.started:.3f}", "VMDIRAC_INSTANCE_NAME": str(self.node["name"]),
                    "VMDIRAC_TAGS": json.dumps(tags, sort_keys=True), "HOME": str(home), "TMPDIR": str(tmp)})
        return env

    def run_scripts(self, scripts: list[str]) -> None:
        env = self.environment()
        for n, text in enumerate(scripts):
            if self.stopping():
                return
            path = self.dir / "scripts" / f"part-{n:03d}"
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            path.chmod(0o700)
            with open(self.logs / f"part-{n:03d}.log", "ab") as out:
                proc = subprocess.Popen([str(path)], cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT)
            status = self.wait_child(proc.pid)
            proc.returncode = 0 if status is None else status   # reaped here, not by subprocess
            log.info("script part %d ended with status %s", n, status)

    # ------------------------------------------------------------ living and halting

    def stopping(self) -> bool:
        return self.terminated or self.halt_file.exists()

    def reap(self) -> dict[int, int]:
        """Collect every exited child (our own and the orphans we adopted as subreaper)."""
        done = {}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return done
            if pid == 0:
                return done
            done[pid] = os.waitstatus_to_exitcode(status)

    def wait_child(self, pid: int) -> int | None:
        """Wait for one child, reaping the others meanwhile; ``None`` if the VM is told to stop first."""
        while not self.stopping():
            done = self.reap()
            if pid in done:
                return done[pid]
            time.sleep(POLL)
        return None

    def live(self) -> None:
        while not self.stopping():
            self.reap()
            time.sleep(POLL)

    def end_processes(self) -> None:
        """SIGTERM every other process of the VM, SIGKILL after the grace, reap them all."""
        me = os.getpid()

        def others(zombies: bool = False) -> list[Proc]:
            return [p for p in vm_processes(me, self.vm_id, include_zombies=zombies) if p.pid != me]

        for sig, wait in ((signal.SIGTERM, self.kill_grace), (signal.SIGKILL, 10.0)):
            for p in others():
                try:
                    os.kill(p.pid, sig)
                    if sig == signal.SIGTERM:
                        os.kill(p.pid, signal.SIGCONT)   # a stopped process acts on SIGTERM only once woken
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while others() and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.02)
        # Orphans that died after us in the tree come to us (subreaper); collect the last ones.
        deadline = time.monotonic() + 5.0
        while others(zombies=True) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        left = others(zombies=True)
        if left:
            log.warning("processes left after halting: %s", [p.pid for p in left])

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        if not set_subreaper():
            log.warning("could not become a child subreaper: orphans of this VM go to init")
        code = 0
        try:
            config, scripts = parse_user_data((self.dir / USER_DATA).read_bytes())
            log.info("VM %s (%s) booting: %d file(s), %d script(s)", self.vm_id, self.node["name"],
                     len(config.get("write_files") or []), len(scripts))
            self.root.mkdir(exist_ok=True)
            self.write_files(config)
            self.run_scripts(scripts)
            self.live()
            why = "terminated (SIGTERM)" if self.terminated else "halted by the VM (halt file)"
        except Exception as e:
            # A VM whose contextualization breaks ends at once: the driver then reports it
            # TERMINATED and its directory keeps the logs.
            log.exception("VM %s failed to boot", self.vm_id)
            why, code = f"boot failed: {e}", 1
        log.info("VM %s %s: ending its processes", self.vm_id, why)
        self.end_processes()
        (self.dir / HALTED_FILE).write_text(json.dumps(
            {"reason": why, "time": dt.datetime.now(dt.timezone.utc).isoformat()}) + "\n")
        return code

    def _on_term(self, signum: int, _frame) -> None:
        self.terminated = True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vmdirac.drivers.local_vm <vm dir>", file=sys.stderr)
        return 1
    vm_dir = Path(args[0])
    (vm_dir / "logs").mkdir(exist_ok=True)
    logging.basicConfig(filename=vm_dir / "logs" / "local-vm.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s local-vm: %(message)s")
    try:
        vm = LocalVM(vm_dir)
    except (OSError, ValueError, KeyError) as e:
        log.error("cannot start the VM in %s: %s", vm_dir, e)
        return 1
    return vm.run()


if __name__ == "__main__":
    sys.exit(main())
