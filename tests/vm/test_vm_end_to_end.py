"""The whole VMDIRAC loop on the embedded default (SQLite, local cloud), as child processes:
from no VM, jobs submitted -> local VMs booted within the pod caps -> every job Done -> the VMs
halt after their halting margin, with a history that shows it."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import base_tree
from tests.pki import REGISTRY
from tests.processes import ServerProcess, free_port
from tests.services.wms_fixtures import jdl, wms_tree
from vmdirac.core.config import deep_merge
from vmdirac.drivers.local_vm import vm_processes
from tests.waiting import wait_for

SITE, ENDPOINT, POD = "LCG.Local.ch", "LCG.Local.ch/local", "cloud1"
SERVICES = ["JobManager", "JobMonitoring", "JobStateUpdate", "Matcher", "SandboxStore", "VirtualMachineManager"]


def cloud_tree(port: int, **pod) -> dict:
    base = f"https://localhost:{port}"
    hosts = {**REGISTRY["Hosts"], "localhost": {**REGISTRY["Hosts"]["localhost"], "Properties": [
        "TrustedHost", "CSAdministrator", "GenericPilot", "VmRpcOperation"]}}
    tree = deep_merge(base_tree(), wms_tree(MaxParametricJobs=100))
    return deep_merge(tree, {
        "Registry": {"Hosts": hosts},
        "Resources": {"Sites": {SITE: {"Cloud": {"local": {
            "Type": "local", "MaxInstances": 4, "Images": {"el9": {"Cores": 1, "RAM": 2048}}}}}}},
        "Operations": {"Defaults": {"VirtualMachines": {"RunningPods": {POD: {
            "Image": "el9", "Endpoints": [ENDPOINT], "PilotGroup": "dirac_pilot", "MaxInstances": 3,
            "MaxBootsPerCycle": 3, "HeartBeatPeriod": 1, "HaltPeriod": 4, "MinWorkingLoad": 0.9,
            "LoadAverageTimespan": 1, "PilotOptions": {"HeartbeatPeriod": 1, "MatchWait": 2},
            "MonitorOptions": {"Tick": 0.5}, **pod}}}}},
        "Systems": {
            "Configuration": {"URLs": {"Server": [f"{base}/Configuration/Server"]}},
            "WorkloadManagement": {
                "Services": {"VirtualMachineManager": {}},
                "Agents": {"VirtualMachineScheduler": {"PollingTime": 2},
                           "VirtualMachineReconciler": {"PollingTime": 3, "StallingInterval": 60}},
                "URLs": {s: [f"{base}/WorkloadManagement/{s}"] for s in SERVICES}}},
    })



@pytest.mark.slow
def test_jobs_make_local_vms_appear_run_and_go(pki, tmp_path):
    port = free_port()
    server = ServerProcess(pki, tmp_path / "root", cloud_tree(port), f"sqlite:///{tmp_path / 'vmdirac.sqlite'}",
                           args=(), port=port)
    try:
        vmm = server.client("WorkloadManagement/VirtualMachineManager", "admin-proxy")
        monitoring = server.client("WorkloadManagement/JobMonitoring", "alice-proxy")
        assert vmm.getInstances({}, None, 0, 100)["TotalRecords"] == 0       # from no VM
        ids = server.client("WorkloadManagement/JobManager").submitJob(
            jdl(Executable="/bin/sh", Arguments="-c 'echo job %n; sleep 1'", Parameters=20))
        assert len(ids) == 20

        most_alive = 0

        def all_done():
            nonlocal most_alive
            alive = vmm.getInstances({"Status": ["New", "Submitted", "Running", "Stopping"]}, None, 0, 100)
            most_alive = max(most_alive, alive["TotalRecords"])
            return monitoring.getJobStats("Status", {}) == {"Done": 20}

        wait_for(all_done, 300, "20 jobs Done", interval=0.5)
        assert 1 <= most_alive <= 3                                           # the pod's cap
        assert {v["Site"] for v in monitoring.getJobsSites(ids).values()} == {SITE}

        def all_halted():
            page = vmm.getInstances({}, None, 0, 100)
            statuses = {r[page["ParameterNames"].index("Status")] for r in page["Records"]}
            return page if statuses == {"Halted"} else None

        page = wait_for(all_halted, 90, "every VM Halted after the halting margin", interval=0.5)
        instance = page["Records"][0][page["ParameterNames"].index("InstanceID")]
        history = vmm.getInstanceHistory(instance)
        seen = [h["Status"] for h in history]
        for status in ("New", "Submitted", "Running", "Halted"):
            assert status in seen, seen
        assert seen.index("New") < seen.index("Submitted") < seen.index("Running") < seen.index("Halted")
        assert any(h["Jobs"] >= 1 for h in history), history          # heartbeats carried the jobs
        assert all(isinstance(h["Load"], float) for h in history)
        # No VM process is left behind.
        nodes = list((tmp_path / "root" / "clouds").glob("*/*/node.json"))
        assert nodes, "no local VM was ever booted"
        leaders = [(json.loads(n.read_text())["pgid"], n.parent.name) for n in nodes]
        assert all(pgid for pgid, _ in leaders)
        # A VM declares itself Halted, then ends its processes: give it its grace to finish.
        wait_for(lambda: not any(vm_processes(pgid, vm_id) for pgid, vm_id in leaders), 30,
                 "every local VM's processes to end")
    finally:
        assert server.stop() == 0, "".join(server.output[-40:])
