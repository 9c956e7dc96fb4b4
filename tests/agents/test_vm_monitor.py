"""The in-VM VirtualMachineMonitor: its pure decision, its loop against a real HTTPS server, and a
whole local VM (cloud-init user data, monitor, pilot, a job) from boot to halt.

The server side is ``FakeVirtualMachineManager`` below, registered with ``Module:``: it has the
three methods of the real VirtualMachineManager a VM calls, with the same signatures, and
records the calls (the instance comes from the caller's credential, so no id is passed).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.contexts.context_fixtures import local_context
from tests.pilot.pilot_fixtures import job
from tests.services.wms_fixtures import WMS_SERVICES, wms_tree
from vmdirac.agents.vm_load import CPUSource, LoadAvgSource
from vmdirac.agents.vm_monitor import VirtualMachineMonitor, load_vm_config
from vmdirac.contexts import CONFIG_PATH, MANAGER, vm_files, vm_path
from vmdirac.contexts.cloudinit import build_user_data
from vmdirac.core.exceptions import IllegalTransition, ServiceUnavailable
from vmdirac.core.export import Caller, Service, export
from vmdirac.drivers.base import BootRequest, NodeState
from vmdirac.drivers.local import LocalDriver
from vmdirac.drivers.local_vm import vm_cpu_seconds
from vmdirac.vm.config import Endpoint, EndpointOptions, ImageOptions
from vmdirac.vm.monitor_policy import Action, Command, MonitorOptions, MonitorState, Observation, decide
from vmdirac.wms.job_status import FINAL
from tests.waiting import wait_for

ELASTIC = MonitorOptions(HaltPeriod=600, MinWorkingLoad=0.01)
NEVER = MonitorOptions(StopPolicy="Never", PilotRestartDelay=60)


# ---------------------------------------------------------------- the decision, pure

def run(opts: MonitorOptions, observations: list[Observation], state: MonitorState | None = None):
    """Feed observations in turn; the actions taken and the last state."""
    state = state or MonitorState(pilot_started=0.0)
    actions = []
    for obs in observations:
        decision = decide(opts, state, obs)
        state = decision.state
        actions.append(decision.action)
    return actions, state, decision


def idle(t: float, **kw) -> Observation:
    return Observation(**{"now": t, "jobs": 0, "load": 0.0, "pilot_alive": True, **kw})


def test_the_first_decision_starts_the_pilot_unless_there_is_none():
    assert decide(ELASTIC, MonitorState(), idle(0, pilot_alive=False)).action == Action.START_PILOT
    adhoc = MonitorOptions(StartPilot=False)
    assert decide(adhoc, MonitorState(), idle(0, pilot_alive=False)).action == Action.NONE


def test_elastic_drains_after_the_halt_period_idle_then_halts_when_the_pilot_is_gone():
    actions, state, _ = run(ELASTIC, [idle(0), idle(300), idle(599.9), idle(600)])
    assert actions == [Action.NONE, Action.NONE, Action.NONE, Action.DRAIN]
    assert state.draining and "idle for 600 s" in state.drain_reason
    actions, _, last = run(ELASTIC, [idle(601), idle(602, pilot_alive=False)], state)
    assert actions == [Action.NONE, Action.HALT]
    assert last.reason.startswith("drained (idle for 600 s")


def test_running_jobs_or_load_keep_the_vm_and_restart_the_idle_clock():
    busy = [idle(0), idle(500, jobs=1), idle(900, jobs=1), idle(1000), idle(1599)]
    actions, state, _ = run(ELASTIC, busy)
    assert Action.DRAIN not in actions and state.idle_since == 1000
    assert run(ELASTIC, busy + [idle(1600)])[0][-1] == Action.DRAIN
    loaded = [idle(0), idle(500, load=0.5), idle(1000, load=0.02), idle(1100), idle(1699)]
    assert Action.DRAIN not in run(ELASTIC, loaded)[0]
    assert run(ELASTIC, loaded + [idle(1700)])[0][-1] == Action.DRAIN


def test_never_does_not_halt_by_itself_and_keeps_a_pilot():
    actions, _, _ = run(NEVER, [idle(t) for t in (0, 600, 6000, 60000)])
    assert actions == [Action.NONE] * 4
    actions, _, _ = run(NEVER, [idle(t, pilot_alive=False) for t in (100, 110, 120)], MonitorState(pilot_started=50.0))
    assert actions == [Action.NONE, Action.START_PILOT, Action.NONE]    # once the restart delay is over
    # Elastic does not restart a pilot that ended: the VM idles out instead.
    assert run(ELASTIC, [idle(100, pilot_alive=False)], MonitorState(pilot_started=0.0))[0] == [Action.NONE]


def test_stop_drains_and_halts_when_the_jobs_are_done_under_any_policy():
    for opts in (ELASTIC, NEVER):
        stop = Command.STOP
        actions, _, last = run(opts, [idle(0, jobs=2, command=stop), idle(10, jobs=1, command=stop),
                                      idle(20, jobs=0, command=stop), idle(21, jobs=0, pilot_alive=False, command=stop)])
        assert actions == [Action.DRAIN, Action.NONE, Action.NONE, Action.HALT]
        assert last.reason == "drained (the server asked to stop)"


def test_halt_halts_now_even_with_jobs():
    for opts in (ELASTIC, NEVER):
        decision = decide(opts, MonitorState(draining=True), idle(0, jobs=3, command=Command.HALT))
        assert (decision.action, decision.reason) == (Action.HALT, "the server asked to halt")


def test_a_shutdown_notice_drains_and_its_time_halts():
    actions, state, last = run(NEVER, [idle(0, jobs=1, shutdown_in=900.0), idle(1, jobs=1, shutdown_in=899.0)])
    assert actions == [Action.DRAIN, Action.NONE]
    assert state.drain_reason == "the provider announced a shutdown in 900 s"
    decision = decide(NEVER, state, idle(2, jobs=1, shutdown_in=0.0))
    assert decision.action == Action.HALT and "shutdown time" in decision.reason
    assert decide(NEVER, MonitorState(), idle(0, shutdown_in=float("inf"))).state.drain_reason == \
        "the provider announced a shutdown"


def test_load_sources_average_over_the_timespan(tmp_path):
    counter = iter([0.0, 1.0, 2.0, 1.9, 4.0])      # CPU seconds; one dip (a process not yet reaped)
    source = CPUSource(lambda: next(counter))
    for t in range(5):
        source.sample(float(t))
    assert source.average(4.0, 60) == pytest.approx(1.0)            # 4 s of CPU over 4 s
    assert source.average(4.0, 1.0) == pytest.approx(2.0)           # the last second only
    loadavg = tmp_path / "loadavg"
    avg = LoadAvgSource(str(loadavg))
    for t, value in enumerate((0.5, 1.5, 4.0)):
        loadavg.write_text(f"{value} 0.1 0.1 1/100 999\n")
        avg.sample(float(t * 30))
    assert avg.average(60.0, 60) == pytest.approx(2.0) and avg.average(60.0, 40) == pytest.approx(2.75)


# ---------------------------------------------------------------- the loop against a server

class FakeVirtualMachineManager(Service):
    """The VM's side of the VirtualMachineManager, recording calls; ``fail`` makes the next calls fail."""

    system = "WorkloadManagement"
    name = "VirtualMachineManager"

    def initialize(self) -> None:
        self.calls: list[tuple[str, str, tuple]] = []
        self.command = ""
        self.fail = 0
        self.renewed = ""                   # the PEM renewInstanceCredential gives
        self.halted = False                 # the server has the instance Halted: heartbeats refused
        self.lock = threading.Lock()

    def _record(self, caller: Caller, method: str, *args) -> None:
        with self.lock:
            if self.fail > 0:
                self.fail -= 1
                raise ServiceUnavailable("the database is down (a test)")
            self.calls.append((method, caller.dn, args))

    def called(self, method: str) -> list[tuple]:
        with self.lock:
            return [args for m, _dn, args in self.calls if m == method]

    @export()
    def declareInstanceRunning(self, caller: Caller, privateIP: str, publicIP: str = "") -> dict:
        self._record(caller, "declareInstanceRunning", privateIP)
        return {"InstanceID": 7, "Status": "Running"}

    @export()
    def instanceHeartBeat(self, caller: Caller, load: float, jobs: int, transferredFiles: int, transferredBytes: int,
                          uptime: float) -> dict:
        self._record(caller, "instanceHeartBeat", load, jobs, transferredFiles, transferredBytes, uptime)
        if self.halted:
            raise IllegalTransition("instance 7 is Halted")
        return {"command": self.command}

    @export()
    def declareInstanceHalting(self, caller: Caller) -> dict:
        self._record(caller, "declareInstanceHalting")
        return {"InstanceID": 7, "Status": "Halted"}

    @export()
    def renewInstanceCredential(self, caller: Caller) -> str:
        self._record(caller, "renewInstanceCredential")
        return self.renewed


MANAGER_TREE = {"Systems": {"WorkloadManagement": {"Services": {"VirtualMachineManager": {
    "Module": "tests.agents.test_vm_monitor:FakeVirtualMachineManager"}}}}}



@dataclass
class FakePilot:
    """Stands for the pilot process: the test decides when its jobs end."""

    alive: bool = False
    jobs: int = 0
    drained: bool = False
    stopped: bool = False
    starts: int = 0

    def start(self) -> None:
        self.alive, self.starts = True, self.starts + 1

    def running_jobs(self) -> int:
        return self.jobs if self.alive else 0

    def drain(self) -> None:
        self.drained = True

    def stop_now(self, grace: float) -> None:
        if self.alive:                      # as the real one: nothing to do once it has exited
            self.stopped, self.alive = True, False

    def finish(self) -> None:
        self.jobs, self.alive = 0, False


@dataclass
class FixedLoad:
    value: float = 0.0

    def sample(self, now: float) -> None:
        pass

    def average(self, now: float, timespan: float) -> float:
        return self.value


@dataclass
class Harness:
    monitor: VirtualMachineMonitor
    manager: FakeVirtualMachineManager | None
    halts: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Harness:
        self.thread = threading.Thread(target=self.monitor.run, daemon=True)
        self.thread.start()
        return self

    def halted(self, timeout: float = 20) -> str:
        wait_for(lambda: self.halts, timeout, "the VM to halt")
        self.thread.join(5)
        assert not self.thread.is_alive()
        return self.halts[0]


@pytest.fixture
def manager_server(start_server, tmp_path):
    server = start_server(f"sqlite:///{tmp_path / 'db.sqlite'}", ["Configuration/Server", MANAGER], MANAGER_TREE)
    return server, next(s for s in server.services if s.name == "VirtualMachineManager")


@pytest.fixture
def harness(manager_server, pki, tmp_path):
    server, fake = manager_server
    made: list[Harness] = []

    def make(port: int | None = None, pilot=None, load: float = 0.0, **monitor) -> Harness:
        opts = {"HeartBeatPeriod": 0.1, "Tick": 0.02, "HaltPeriod": 0.5, "LoadAverageTimespan": 0.2, **monitor}
        ctx = local_context(pki, port or server.port, monitor_options=opts)
        root = tmp_path / f"vm{len(made)}"
        for f in vm_files(ctx, start_pilot=pilot is not None):
            target = vm_path(f.path, root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
        config = load_vm_config(vm_path(CONFIG_PATH, root), root=str(root))
        h = Harness(None, fake if port is None else None)  # type: ignore[arg-type]
        h.monitor = VirtualMachineMonitor(config, load=FixedLoad(load), halt=h.halts.append, pilot=pilot)
        made.append(h)
        return h

    yield make
    for h in made:
        h.monitor.stop()
        if h.thread:
            h.thread.join(10)


def test_the_monitor_declares_heartbeats_and_halts_an_idle_vm(harness, pki):
    h = harness().start()
    assert h.halted().startswith("drained (idle for")
    fake = h.manager
    assert fake.called("declareInstanceRunning") == [("127.0.0.1",)]
    beats = fake.called("instanceHeartBeat")
    assert len(beats) >= 2
    for load, jobs, files, size, uptime in beats:
        assert (load, jobs, files, size) == (0.0, 0, 0, 0) and uptime >= 0
    assert fake.called("declareInstanceHalting") == [()]
    methods = [m for m, _dn, _a in fake.calls]
    assert methods[0] == "declareInstanceRunning" and methods[-1] == "declareInstanceHalting"
    assert {dn for _m, dn, _a in fake.calls} == {"/O=vmdirac/OU=users/CN=alice"}   # the VM's own credential


def test_stop_from_the_server_drains_the_pilot_and_halts_when_its_jobs_end(harness):
    pilot = FakePilot(jobs=1)
    h = harness(pilot=pilot, HaltPeriod=600).start()
    wait_for(lambda: pilot.alive and len(h.manager.called("instanceHeartBeat")) >= 1, 10, "a heartbeat")
    assert h.manager.called("instanceHeartBeat")[-1][1] == 1                 # one job running
    h.manager.command = "stop"
    wait_for(lambda: pilot.drained, 10, "the pilot to be told to drain")
    beats = len(h.manager.called("instanceHeartBeat"))
    wait_for(lambda: len(h.manager.called("instanceHeartBeat")) >= beats + 3, 10, "more heartbeats")
    assert not h.halts and not h.manager.called("declareInstanceHalting")   # its job still runs
    pilot.finish()
    assert h.halted() == "drained (the server asked to stop)"
    assert h.manager.called("declareInstanceHalting") == [()] and not pilot.stopped


def test_halt_from_the_server_halts_now(harness):
    pilot = FakePilot(jobs=2)
    h = harness(pilot=pilot, StopPolicy="Never").start()
    wait_for(lambda: h.manager.called("instanceHeartBeat"), 10, "a heartbeat")
    h.manager.command = "halt"
    assert h.halted() == "the server asked to halt"
    assert pilot.stopped and h.manager.called("declareInstanceHalting") == [()]


def test_a_vm_the_server_has_halted_drains_and_halts(harness):
    pilot = FakePilot(jobs=1)
    h = harness(pilot=pilot, StopPolicy="Never").start()
    wait_for(lambda: h.manager.called("instanceHeartBeat"), 10, "a heartbeat")
    h.manager.halted = True                          # e.g. the reconciler gave up on it
    wait_for(lambda: pilot.drained, 10, "the pilot to drain")
    pilot.finish()
    assert h.halted() == "drained (the server asked to stop)"


def test_the_monitor_survives_a_failing_server(harness):
    h = harness(HaltPeriod=600)
    h.manager.fail = 3
    h.start()
    wait_for(lambda: len(h.manager.called("instanceHeartBeat")) >= 2, 20, "heartbeats after the failures")
    assert h.manager.called("declareInstanceRunning") == [("127.0.0.1",)]
    assert h.manager.fail == 0 and h.thread.is_alive()


def test_a_credential_near_its_end_is_renewed(harness, pki):
    fresh = Path(pki.path("alice-proxy2")).read_text()
    h = harness(HaltPeriod=600, RenewCredentialBefore=10 * 365 * 86400.0)   # always "near its end"
    h.manager.renewed = fresh
    h.start()
    wait_for(lambda: h.manager.called("renewInstanceCredential"), 10, "a renewal")
    wait_for(lambda: h.monitor.config.credential.read_text() == fresh, 10, "the new credential in place")
    assert h.monitor.config.credential.stat().st_mode & 0o777 == 0o600
    beats = len(h.manager.called("instanceHeartBeat"))
    wait_for(lambda: len(h.manager.called("instanceHeartBeat")) > beats + 1, 10, "heartbeats with the new credential")


def test_without_any_server_the_vm_still_halts(harness):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    h = harness(port=closed, HaltPeriod=0.3, HeartBeatPeriod=0.2).start()
    assert h.halted(60).startswith("drained (idle")
    assert not h.monitor.declared


def test_a_machine_features_shutdown_notice_is_a_stop(harness):
    pilot = FakePilot(jobs=1)
    h = harness(pilot=pilot, StopPolicy="Never")
    notice = h.monitor.config.path("/etc/machinefeatures/shutdowntime")
    notice.parent.mkdir(parents=True)
    h.start()
    wait_for(lambda: pilot.alive, 10, "the pilot")
    notice.write_text(f"{int(time.time()) + 3600}\n")
    wait_for(lambda: pilot.drained, 10, "the pilot to drain")
    assert not h.halts
    notice.write_text(f"{int(time.time()) - 1}\n")                 # the provider's time has come
    assert h.halted() == "the shutdown time of the provider's notice is reached"
    assert pilot.stopped


# ---------------------------------------------------------------- a whole local VM

IMAGE = ImageOptions(ImageID="local-image", Cores=2)


def local_endpoint() -> Endpoint:
    return Endpoint("LCG.Test.ch/local", "LCG.Test.ch", EndpointOptions(Type="local", Driver={"KillGrace": 2}),
                    {"local-image": IMAGE})


@pytest.fixture
def driver(tmp_path):
    drv = LocalDriver(local_endpoint(), "test-deployment", tmp_path / "vms")
    yield drv
    for node in drv.list_nodes():
        drv.terminate(node.vm_id)


def vm_logs(vm_dir: Path) -> str:
    out = []
    for path in sorted(vm_dir.rglob("*.log")):
        out.append(f"--- {path.relative_to(vm_dir)} ---\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(out)


def test_a_local_vm_runs_a_job_and_halts_after_the_margin(start_server, pki, tmp_path, driver):
    server = start_server(f"sqlite:///{tmp_path / 'db.sqlite'}", WMS_SERVICES + [MANAGER],
                          {**wms_tree(), **{"Systems": {"WorkloadManagement": {
                              **wms_tree()["Systems"]["WorkloadManagement"],
                              "Services": {**wms_tree()["Systems"]["WorkloadManagement"]["Services"],
                                           **MANAGER_TREE["Systems"]["WorkloadManagement"]["Services"]}}}}})
    fake = next(s for s in server.services if s.name == "VirtualMachineManager")
    ctx = local_context(pki, server.port, stop_policy="Elastic", halt_period=2.0, min_working_load=0.5,
                        heartbeat_period=0.3, load_average_timespan=1.0, job_slots=1,
                        pilot_options={"MatchWait": 1, "PollingInterval": 0.2, "HeartbeatPeriod": 1,
                                       "WatchdogPeriod": 0.2, "KillGrace": 1},
                        monitor_options={"Tick": 0.1, "PilotStopGrace": 5})
    node = driver.boot(BootRequest(ctx.instance_name, IMAGE, build_user_data(ctx), {"pod": ctx.pod}))
    vm_dir = driver.vm_dir(node.vm_id)
    logs = lambda: vm_logs(vm_dir)  # noqa: E731
    wait_for(lambda: fake.called("declareInstanceRunning"), 60, "the monitor to declare the VM", logs)

    job_id = server.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(
        job(Executable="/bin/sleep", Arguments="2"))
    monitoring = server.client("WorkloadManagement/JobMonitoring", "alice-proxy")
    status = lambda: monitoring.getJobsStates([job_id])[str(job_id)]["Status"]  # noqa: E731
    wait_for(lambda: status() in FINAL, 90, f"job {job_id} to end", logs)
    assert status() == "Done", logs()

    # The VM idles out: drained, declared halting, ended by its init; nothing left.
    wait_for(lambda: fake.called("declareInstanceHalting"), 60, "the VM to declare halting", logs)
    wait_for(lambda: driver.status(node.vm_id).state == NodeState.TERMINATED, 30, "the VM to end", logs)
    pgid = driver.leader_pid(node.vm_id)
    wait_for(lambda: _group_gone(pgid), 10, "its processes to be gone", logs)
    beats = fake.called("instanceHeartBeat")
    assert any(jobs == 1 for _load, jobs, *_ in beats), beats          # the job was seen running
    assert beats[-1][1] == 0 and beats[-1][4] > beats[0][4]          # uptime grows
    assert fake.called("declareInstanceRunning") == [("127.0.0.1",)]
    monitor_log = (vm_dir / "root/var/log/vmdirac/vm-monitor.log").read_text()
    assert "draining the VM: idle for" in monitor_log and "halting the VM: drained (idle for" in monitor_log
    assert '"RunningJobs": []' in (vm_dir / "root/var/lib/vmdirac/pilot/.pilot-status.json").read_text()


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_load_of_a_local_vm_is_its_own_processes_cpu(driver):
    busy = "#!/bin/sh\nnohup python3 -c 'while True: pass' >/dev/null 2>&1 &\n"
    quiet = "#!/bin/sh\nnohup sleep 600 >/dev/null 2>&1 &\n"
    loads = {}
    for name, script in (("busy", busy), ("quiet", quiet)):
        from vmdirac.contexts.cloudinit import multipart

        node = driver.boot(BootRequest(f"vm-{name}", IMAGE, multipart([(script, "x-shellscript", "s")]), {}))
        leader = driver.leader_pid(node.vm_id)
        wait_for(lambda: (driver.vm_dir(node.vm_id) / "logs/part-000.log").exists(), 30, "the boot")
        source = CPUSource(lambda: vm_cpu_seconds(leader, exclude_own=(leader,)))
        start = time.monotonic()
        source.sample(0.0)
        # Sample for a second and a half of wall time (the measurement itself, not a synchronisation).
        while time.monotonic() - start < 1.5:
            time.sleep(0.1)
            source.sample(time.monotonic() - start)
        loads[name] = source.average(time.monotonic() - start, 60)
    assert loads["busy"] > 0.5, loads                    # one core kept busy
    assert loads["quiet"] < 0.05, loads                  # another VM's busy loop is not this VM's load
    assert sys.platform.startswith("linux")


# ---------------------------------------------------------------- against the real service

def test_the_monitor_against_the_real_virtual_machine_manager(start_server, pki, tmp_path):
    """The same loop with the real VirtualMachineManager and a per-VM credential it issued."""
    from tests.services.test_virtual_machine_manager import TREE, Cloud

    server = start_server(f"sqlite:///{tmp_path / 'db.sqlite'}", WMS_SERVICES + [MANAGER], TREE)
    cloud = Cloud(server, tmp_path)
    instance_id = cloud.instance()
    ctx = local_context(pki, server.port, instance_id=instance_id,
                        credential_pem=Path(cloud.credential(instance_id)).read_bytes(),
                        monitor_options={"HeartBeatPeriod": 0.1, "Tick": 0.02, "HaltPeriod": 600})
    root = tmp_path / "vm"
    for f in vm_files(ctx):
        vm_path(f.path, root).parent.mkdir(parents=True, exist_ok=True)
        vm_path(f.path, root).write_bytes(f.content)
    pilot = FakePilot(jobs=1)
    h = Harness(None, None)  # type: ignore[arg-type]
    h.monitor = VirtualMachineMonitor(load_vm_config(vm_path(CONFIG_PATH, root), root=str(root)),
                                      load=FixedLoad(0.75), halt=h.halts.append, pilot=pilot)
    h.start()
    try:
        status = lambda: cloud.db.get(instance_id).status  # noqa: E731
        wait_for(lambda: status() == "Running", 10, "the instance to be Running")
        history = lambda: cloud.user().getInstanceHistory(instance_id)  # noqa: E731
        wait_for(lambda: sum(1 for r in history() if r["Status"] == "Running") >= 3, 10, "heartbeats in the history")
        cloud.user().stopInstance([instance_id])                   # an operator stops it: drain, then halt
        wait_for(lambda: pilot.drained, 10, "the pilot to drain")
        assert not h.halts
        pilot.finish()
        assert h.halted() == "drained (the server asked to stop)"
        assert status() == "Halted"
    finally:
        h.monitor.stop()
    rows = history()
    assert [r["Status"] for r in rows][:3] == ["New", "Submitted", "Running"] and rows[-1]["Status"] == "Halted"
    beats = [r for r in rows if r["Status"] in ("Running", "Stopping") and r.get("Jobs") == 1]
    assert beats and all(abs(r["Load"] - 0.75) < 1e-6 for r in beats), rows
