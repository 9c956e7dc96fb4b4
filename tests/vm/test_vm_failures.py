"""Kill -9 in the middle of a run, on the embedded default (SQLite, local cloud, child processes):
the VM scheduler, one VM's monitor, one whole VM (and a frozen one). No job is lost or run
twice, the VM counts stay within the caps, a silent VM goes Stalled and is terminated at its
endpoint (a VM the endpoint no longer has is closed at once), and no VM process is left.

Every job runs ``payload.sh``, which appends ``start <vm id>`` and ``end <vm id>`` lines to
``runs/<job id>``: the record of where and how often each job really ran, independent of the
server's bookkeeping (which the tests check too: one ``Matched`` logging record per attempt,
``RescheduleCounter`` = attempts - 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, command
from tests.processes import ServerProcess, free_port
from tests.services.wms_fixtures import jdl
from tests.vm.test_vm_end_to_end import ENDPOINT, POD, cloud_tree
from vmdirac.core.config import deep_merge
from vmdirac.drivers.local_vm import process_table, vm_processes

pytestmark = pytest.mark.slow

STALLING = 8.0          # the reconciler's StallingInterval (VM heartbeats every second)
STALLED_TIME = 8.0      # the StalledJobAgent's StalledTime (job heartbeats every second)
FAILED_TIME = 2.0
ALIVE = ["New", "Submitted", "Wait_ssh_context", "Contextualizing", "Running", "Stopping", "Stalled"]
BOOTING = {"New", "Submitted", "Wait_ssh_context", "Contextualizing"}
POD_CAP, ENDPOINT_CAP = 3, 4   # cloud_tree's pod MaxInstances (unless overridden) and endpoint MaxInstances


# ---------------------------------------------------------------- set-up

def failures_tree(port: int, scheduler_in_server: bool = True, **pod) -> dict:
    """``cloud_tree`` with test-short failure detection: silent VMs and jobs are noticed in seconds."""
    return deep_merge(cloud_tree(port, **pod), {"Systems": {"WorkloadManagement": {"Agents": {
        "VirtualMachineScheduler": {"PollingTime": 1, "Enabled": scheduler_in_server},
        "VirtualMachineReconciler": {"PollingTime": 1, "StallingInterval": STALLING, "BootGrace": 20},
        "StalledJobAgent": {"PollingTime": 1, "StalledTime": STALLED_TIME, "FailedTime": FAILED_TIME,
                            "MatchedTime": 30},
    }}}})


def write_payload(tmp_path: Path, *, wait_release: bool, seconds: float = 0) -> Path:
    """The jobs' payload: records its start and end in ``runs/<job id>`` (with the VM it ran on);
    in between it sleeps ``seconds`` or waits for ``release/<job id>``."""
    runs, release = tmp_path / "runs", tmp_path / "release"
    runs.mkdir(exist_ok=True)
    release.mkdir(exist_ok=True)
    work = (f'while [ ! -e "{release}/$DIRACJOBID" ]; do sleep 0.1; done' if wait_release
            else f"sleep {seconds}")
    script = tmp_path / "payload.sh"
    script.write_text("\n".join([
        "#!/bin/sh",
        f'echo "start $VMDIRAC_VM_ID" >> "{runs}/$DIRACJOBID"',
        work,
        f'echo "end $VMDIRAC_VM_ID" >> "{runs}/$DIRACJOBID"', ""]))
    script.chmod(0o755)
    return script


def runs(tmp_path: Path, job_id: int) -> list[tuple[str, str]]:
    """(start|end, vm id) lines the payload of ``job_id`` wrote, in order."""
    try:
        text = (tmp_path / "runs" / str(job_id)).read_text()
    except FileNotFoundError:
        return []
    return [tuple(line.split(maxsplit=1)) for line in text.splitlines() if line.strip()]


def until(predicate, timeout: float, what: str, every: float = 0.2, on_timeout=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(every)


def start_agent(server: ServerProcess, agent: str, log: Path) -> subprocess.Popen:
    """``dirac-agent`` with the server's root and configuration (its own process)."""
    env = {k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"}
    env["PYTHONPATH"] = str(ROOT)
    with open(log, "ab") as out:
        return subprocess.Popen([command("dirac-agent"), agent, "--root", str(server.config.parent),
                                 "-c", str(server.config)], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


# ---------------------------------------------------------------- the local VMs, from outside

def nodes(root: Path) -> list[dict]:
    out = []
    for path in sorted((root / "clouds").glob("*/*/node.json")):
        try:
            out.append({**json.loads(path.read_text()), "dir": str(path.parent)})
        except (OSError, ValueError):   # being rewritten: the next look sees it
            continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def live_processes(node: dict, table: dict | None = None) -> list:
    """Every live (non-zombie) process of one local VM: its init's tree and process group, the
    processes marked with its id, and its init found by command line (were its pid not recorded)."""
    table = process_table() if table is None else table
    leader = node.get("pgid") or node.get("pid")
    entry = table.get(leader) if leader else None
    if entry is None or entry.start_ticks != node.get("start_ticks"):
        leader = -1                      # gone, or the pid now belongs to someone else
    procs = {p.pid: p for p in vm_processes(leader, node["vm_id"], table)}
    for p in table.values():
        if p.pid not in procs and not p.zombie and "vmdirac.drivers.local_vm" in _cmdline(p.pid) \
                and node["dir"] in _cmdline(p.pid):
            procs[p.pid] = p
    return list(procs.values())


def any_vm_process_left(root: Path) -> dict[str, list[int]]:
    table = process_table()
    return {n["vm_id"]: [p.pid for p in procs] for n in nodes(root) if (procs := live_processes(n, table))}


def node_of(root: Path, vm_id: str) -> dict:
    (node,) = [n for n in nodes(root) if n["vm_id"] == vm_id]
    return node


class Instances:
    """Polls the VirtualMachineManager and remembers the most VMs ever alive, per pod and endpoint."""

    def __init__(self, vmm) -> None:
        self.vmm = vmm
        self.most_per_pod: dict[str, int] = {}
        self.most_per_endpoint: dict[str, int] = {}

    def look(self) -> list[dict]:
        page = self.vmm.getInstances({}, None, 0, 1000)
        rows = [dict(zip(page["ParameterNames"], r)) for r in page["Records"]]
        for key, most in (("Pod", self.most_per_pod), ("Endpoint", self.most_per_endpoint)):
            counts: dict[str, int] = {}
            for r in rows:
                if r["Status"] in ALIVE:
                    counts[r[key]] = counts.get(r[key], 0) + 1
            for name, n in counts.items():
                most[name] = max(most.get(name, 0), n)
        return rows

    def by_vm_id(self, vm_id: str) -> dict | None:
        return next((r for r in self.look() if r["EndpointVMID"] == vm_id), None)

    def all_halted(self) -> list[dict] | None:
        rows = self.look()
        return rows if rows and all(r["Status"] == "Halted" for r in rows) else None


class Jobs:
    def __init__(self, server: ServerProcess) -> None:
        self.monitoring = server.client("WorkloadManagement/JobMonitoring", "alice-proxy")
        self.manager = server.client("WorkloadManagement/JobManager", "alice-proxy")

    def status(self, ids: list[int]) -> dict[int, str]:
        return {int(j): s["Status"] for j, s in self.monitoring.getJobsStates(ids).items()}

    def logging(self, job_id: int) -> list[list]:
        return self.monitoring.getJobLoggingInfo(job_id)

    def attempts(self, job_id: int) -> int:
        """Times the job was given to a pilot, by the server's record."""
        return sum(1 for r in self.logging(job_id) if r[0] == "Matched")

    def reschedule_counter(self, job_id: int) -> int:
        return self.monitoring.getJobAttribute(job_id, "RescheduleCounter")

    def describe(self, ids: list[int]) -> str:
        return "\n".join(f"job {j}: " + " -> ".join(f"{r[0]}/{r[1]} ({r[4]})" for r in self.logging(j)) for j in ids)


def check_each_job_ran_once(tmp_path: Path, jobs: Jobs, ids: list[int]) -> None:
    """Every job Done, having completed exactly once; one match per attempt; the counter agrees."""
    assert jobs.status(ids) == {j: "Done" for j in ids}, jobs.describe(ids)
    for j in ids:
        lines = runs(tmp_path, j)
        ends = [vm for what, vm in lines if what == "end"]
        starts = [vm for what, vm in lines if what == "start"]
        counter = jobs.reschedule_counter(j)
        assert len(ends) == 1, (j, lines)                                 # completed once
        assert jobs.attempts(j) == counter + 1, (j, jobs.describe([j]))  # one Matched per attempt
        assert len(starts) <= counter + 1, (j, lines)                     # never started unmatched


def check_clean_end(root: Path, instances: Instances) -> None:
    """Every VM Halted, none of their processes left."""
    until(instances.all_halted, 60, "every VM Halted", on_timeout=lambda: instances.look())
    assert nodes(root), "no local VM was ever booted"
    until(lambda: not any_vm_process_left(root), 30, "every local VM's processes to end",
          on_timeout=lambda: any_vm_process_left(root))


def kill_every_process(node: dict) -> list[int]:
    """SIGKILL a whole local VM: its process group and its init, then whatever of it is left
    (repeated: a shell loop may start a child between a look and the kill)."""
    killed = []
    if node.get("pgid"):
        for kill in (lambda: os.killpg(node["pgid"], signal.SIGKILL), lambda: os.kill(node["pid"], signal.SIGKILL)):
            try:
                kill()
            except ProcessLookupError:
                pass

    def gone() -> bool:
        left = live_processes(node)
        for p in left:
            try:
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
            except ProcessLookupError:
                pass
        return not left

    until(gone, 10, f"every process of VM {node['vm_id']} killed", every=0.05)
    return killed


# ---------------------------------------------------------------- (a) the scheduler

def test_scheduler_killed_while_vms_boot_and_run(pki, tmp_path):
    """The VirtualMachineScheduler in a process of its own, killed -9 three times, started again
    each time: (1) once it has recorded a VM (New) and is about to boot it; (2) inside the
    driver's boot (the VM's node.json just written: the VM may start while the DB has it New,
    without its endpoint id); (3) while VMs run jobs. Every job Done exactly once, the caps kept,
    the VMs that were never booted closed, everything halted in the end."""
    root, port = tmp_path / "root", free_port()
    server = ServerProcess(pki, root, failures_tree(port, scheduler_in_server=False),
                           f"sqlite:///{tmp_path / 'vmdirac.sqlite'}", args=(), port=port)
    schedulers: list[subprocess.Popen] = []
    log = tmp_path / "scheduler.log"

    def kill_and_restart() -> None:
        schedulers[-1].send_signal(signal.SIGKILL)
        assert schedulers[-1].wait(10) == -signal.SIGKILL
        schedulers.append(start_agent(server, "WorkloadManagement/VirtualMachineScheduler", log))

    try:
        instances = Instances(server.client("WorkloadManagement/VirtualMachineManager", "admin-proxy"))
        jobs = Jobs(server)
        payload = write_payload(tmp_path, wait_release=False, seconds=1.5)
        ids = jobs.manager.submitJob(jdl(Executable=str(payload), Parameters=9))
        assert len(ids) == 9
        schedulers.append(start_agent(server, "WorkloadManagement/VirtualMachineScheduler", log))

        # Kill 1: as soon as a VM is recorded (the scheduler is in its act, booting up to 3).
        until(lambda: any(r["Status"] in BOOTING for r in instances.look()), 60, "a VM recorded",
              every=0.02, on_timeout=lambda: log.read_text()[-3000:])
        kill_and_restart()

        # Kill 2: inside the driver's boot of a VM (its directory just made).
        booted = len(nodes(root))
        until(lambda: len(list((root / "clouds").glob("*/*/node.json"))) > booted, 60, "a VM being booted",
              every=0.005, on_timeout=lambda: log.read_text()[-3000:])
        kill_and_restart()

        # Kill 3: while VMs run jobs.
        until(lambda: "Running" in jobs.status(ids).values() and
              any(r["Status"] == "Running" for r in instances.look()), 60, "a job Running on a VM",
              on_timeout=lambda: jobs.describe(ids))
        kill_and_restart()

        until(lambda: (instances.look(), set(jobs.status(ids).values()) == {"Done"})[1], 80,
              "every job Done", on_timeout=lambda: jobs.describe(ids))
        check_each_job_ran_once(tmp_path, jobs, ids)
        assert 1 <= instances.most_per_pod[POD] <= POD_CAP, instances.most_per_pod
        assert instances.most_per_endpoint[ENDPOINT] <= ENDPOINT_CAP, instances.most_per_endpoint
        check_clean_end(root, instances)
    finally:
        for proc in schedulers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in schedulers]
        assert server.stop() == 0, "".join(server.output[-40:])
    assert codes[-1] == 0, log.read_text()[-3000:]       # the last one stopped cleanly


# ---------------------------------------------------------------- (b), (c), (d) one VM

def freeze_every_process(node: dict) -> None:
    """SIGSTOP every process of a local VM: a hung VM, still there at its endpoint but silent."""
    def frozen() -> bool:
        left = [p for p in live_processes(node) if p.state not in ("T", "t")]
        for p in left:
            try:
                os.kill(p.pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        return not left

    until(frozen, 10, f"every process of VM {node['vm_id']} stopped", every=0.05)


def hit_one_vm_mid_job(pki, tmp_path: Path, how: str) -> None:
    """Two jobs on two VMs; one VM is hit while its job runs (``how``: ``monitor``: its monitor
    killed -9; ``kill``: every process of it killed -9; ``freeze``: every process SIGSTOPped).

    The VM: a silent one (``monitor``, ``freeze``) still exists at its endpoint, so it goes
    Stalled after the stalling interval and is terminated there (nothing of it left), then closed
    (Halted); a killed one no longer exists at its endpoint (the local driver lists no process
    for it), so the reconciler closes it at once (Halted, "gone at the endpoint").
    Its job ends Failed: by the StalledJobAgent (Running -> Stalled -> Failed) when no one is left
    to report it (``kill``, ``freeze``); when only the monitor died, the pilot is still there when
    the VM is terminated (SIGTERM first, on the local cloud) and reports the job it loses itself,
    or, if it cannot, the StalledJobAgent does. The other job ends Done; the failed job, rescheduled by its owner, runs to Done on another VM."""
    root, port = tmp_path / "root", free_port()
    server = ServerProcess(pki, root, failures_tree(port, MaxInstances=2),
                           f"sqlite:///{tmp_path / 'vmdirac.sqlite'}", args=(), port=port)
    try:
        instances = Instances(server.client("WorkloadManagement/VirtualMachineManager", "admin-proxy"))
        jobs = Jobs(server)
        payload = write_payload(tmp_path, wait_release=True)
        ids = jobs.manager.submitJob(jdl(Executable=str(payload), Parameters=2))
        until(lambda: all(runs(tmp_path, j) for j in ids) and set(jobs.status(ids).values()) == {"Running"}, 60,
              "both jobs Running", on_timeout=lambda: jobs.describe(ids))
        victim_job, other_job = ids
        (_, victim_vm), = runs(tmp_path, victim_job)
        (_, other_vm), = runs(tmp_path, other_job)
        assert victim_vm != other_vm          # one slot per VM: two VMs
        node = node_of(root, victim_vm)
        instance = until(lambda: instances.by_vm_id(victim_vm), 10, "the victim's instance")
        assert instance["Status"] == "Running"

        if how == "monitor":
            table = process_table()
            (monitor,) = [p for p in live_processes(node, table) if "vmdirac.cli.vm_monitor" in _cmdline(p.pid)]
            os.kill(monitor.pid, signal.SIGKILL)
            until(lambda: monitor.pid not in {p.pid for p in live_processes(node)}, 10, "the monitor dead")
            # The rest of the VM lives on (its pilot still runs the job) until it is terminated.
            assert live_processes(node)
        elif how == "freeze":
            freeze_every_process(node)
        else:
            kill_every_process(node)
        (tmp_path / "release" / str(other_job)).touch()      # the other job ends normally

        until(lambda: (instances.by_vm_id(victim_vm) or {}).get("Status") == "Halted", STALLING + 40,
              "the dead VM Halted", on_timeout=lambda: instances.by_vm_id(victim_vm))
        history = [(h["Status"], h["Reason"]) for h in instances.vmm.getInstanceHistory(instance["InstanceID"])]
        seen = [status for status, _ in history]
        if how == "kill":
            assert seen[-1] == "Halted" and history[-1][1] == "gone at the endpoint", history
        else:
            assert "Stalled" in seen and seen.index("Running") < seen.index("Stalled") < seen.index("Halted"), history
            assert json.loads((Path(node["dir"]) / "node.json").read_text())["state"] == "terminated"
        until(lambda: not live_processes(node), 10, "no process of the dead VM left",
              on_timeout=lambda: live_processes(node))

        # Its job: Failed (by the StalledJobAgent, Running -> Stalled -> Failed, when nobody was
        # left to report it); never Done meanwhile.
        until(lambda: jobs.status([victim_job])[victim_job] == "Failed", STALLED_TIME + FAILED_TIME + 30,
              "the dead VM's job Failed", on_timeout=lambda: jobs.describe([victim_job]))
        trail = [(r[0], r[4]) for r in jobs.logging(victim_job)]
        by_agent = ("Stalled", "StalledJobAgent") in trail and ("Failed", "StalledJobAgent") in trail
        by_pilot = trail[-1] == ("Failed", "JobWrapper")
        # A VM whose monitor died, or a frozen VM that termination wakes (SIGTERM then SIGCONT, as
        # a cloud's shutdown), may report its killed payload itself before it ends.
        assert by_agent or (how in ("monitor", "freeze") and by_pilot), jobs.describe([victim_job])
        assert [what for what, _ in runs(tmp_path, victim_job)] == ["start"]   # killed, not finished
        until(lambda: jobs.status([other_job])[other_job] == "Done", 30, "the other job Done",
              on_timeout=lambda: jobs.describe([other_job]))

        # Rescheduled by its owner, the job runs again, elsewhere, to Done.
        (tmp_path / "release" / str(victim_job)).touch()
        assert jobs.manager.rescheduleJob(victim_job)["Successful"] == [victim_job]
        until(lambda: jobs.status([victim_job])[victim_job] == "Done", 60, "the rescheduled job Done",
              on_timeout=lambda: jobs.describe([victim_job]))
        check_each_job_ran_once(tmp_path, jobs, ids)
        assert jobs.reschedule_counter(victim_job) == 1
        starts = [vm for what, vm in runs(tmp_path, victim_job) if what == "start"]
        assert len(starts) == 2 and starts[0] == victim_vm and starts[1] != victim_vm, starts
        assert instances.most_per_pod[POD] <= 2, instances.most_per_pod
        check_clean_end(root, instances)
    finally:
        assert server.stop() == 0, "".join(server.output[-40:])


def test_vm_monitor_killed(pki, tmp_path):
    hit_one_vm_mid_job(pki, tmp_path, "monitor")


def test_whole_vm_killed(pki, tmp_path):
    hit_one_vm_mid_job(pki, tmp_path, "kill")


def test_whole_vm_frozen(pki, tmp_path):
    hit_one_vm_mid_job(pki, tmp_path, "freeze")


# ---------------------------------------------------------------- a VM whose id never reached the DB

class StillStalled(AssertionError):
    pass


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_vm_without_recorded_endpoint_id_dies(pki, tmp_path, how):
    """``kill``: the VM is gone at its endpoint and should be closed at once; ``freeze``: it is
    still there, silent, and should be Stalled, terminated (found by its name tag), closed."""
    root, port = tmp_path / "root", free_port()
    db_url = f"sqlite:///{tmp_path / 'vmdirac.sqlite'}"
    server = ServerProcess(pki, root, failures_tree(port, MaxInstances=1), db_url, args=(), port=port)
    try:
        instances = Instances(server.client("WorkloadManagement/VirtualMachineManager", "admin-proxy"))
        jobs = Jobs(server)
        payload = write_payload(tmp_path, wait_release=True)
        job = jobs.manager.submitJob(jdl(Executable=str(payload)))
        until(lambda: runs(tmp_path, job) and jobs.status([job])[job] == "Running", 60, "the job Running")
        (_, vm_id), = runs(tmp_path, job)
        instance = until(lambda: instances.by_vm_id(vm_id), 10, "its instance")
        # What the DB holds when the scheduler died right after the driver's boot.
        from sqlalchemy import update

        from vmdirac.core.db import make_engine
        from vmdirac.db.virtual_machine_db import instances as table
        engine = make_engine(db_url)
        with engine.begin() as conn:
            conn.execute(update(table).where(table.c.InstanceID == instance["InstanceID"]).values(EndpointVMID=""))
        engine.dispose()
        node = node_of(root, vm_id)
        kill_every_process(node) if how == "kill" else freeze_every_process(node)

        def status() -> str:
            return next(r["Status"] for r in instances.look() if r["InstanceID"] == instance["InstanceID"])

        try:
            # Gone: closed at the reconciler's next cycles. Frozen: Stalled, terminated (the local
            # driver wakes a stopped VM with SIGCONT to let it act on SIGTERM), closed.
            until(lambda: status() == "Halted", 15 if how == "kill" else STALLING + 30, "the dead VM closed (Halted)")
        except AssertionError as e:
            raise StillStalled(f"{e}; it is {status()}") from None
        assert not live_processes(node)
    finally:
        for n in nodes(root):          # a frozen VM nobody terminated
            if live_processes(n):
                kill_every_process(n)
        assert server.stop() == 0, "".join(server.output[-40:])
