"""The embedded server (a child process) with a pod on two endpoints: moto's EC2 and the local
cloud. VMs booted on moto carry our user data and tags but run nothing, so they never send a
heartbeat: the reconciler marks them Stalled after the (test-short) boot grace and terminates
them, as moto's instance list shows; the local endpoint's VMs run every job to Done."""

from __future__ import annotations

import pytest
import yaml

from tests.clouds.moto_ec2 import KEY, SECRET, MotoEC2
from tests.processes import ServerProcess, free_port
from tests.services.wms_fixtures import jdl
from tests.vm.test_vm_end_to_end import ENDPOINT, POD, SITE, cloud_tree
from tests.waiting import wait_for
from vmdirac.core.config import deep_merge

EC2 = f"{SITE}/moto"
GRACE = 8.0


@pytest.fixture
def moto():
    m = MotoEC2()
    yield m
    m.stop()


@pytest.mark.slow
def test_moto_vms_stall_and_are_terminated_while_local_vms_run_the_jobs(pki, tmp_path, moto, db_url):
    creds = tmp_path / "ec2-credentials.yaml"
    creds.write_text(yaml.safe_dump({"access_key": KEY, "secret_key": SECRET}))
    creds.chmod(0o600)
    port = free_port()
    tree = deep_merge(cloud_tree(port), {
        "Resources": {"Sites": {SITE: {"Cloud": {"moto": {
            "Type": "ec2", "URL": moto.url, "Region": "us-east-1", "CredentialsFile": str(creds),
            "MaxInstances": 2, "Priority": 2, "Images": {"el9": {"ImageID": moto.ami, "Flavor": "t2.micro"}}}}}}},
        "Operations": {"Defaults": {"VirtualMachines": {"RunningPods": {POD: {
            "Endpoints": [EC2, ENDPOINT], "MaxInstances": 4, "MaxBootsPerCycle": 4}}}}},
        "Systems": {"WorkloadManagement": {"Agents": {
            "VirtualMachineScheduler": {"PollingTime": 1},
            "VirtualMachineReconciler": {"PollingTime": 1, "StallingInterval": GRACE, "BootGrace": GRACE}}}},
    })
    server = ServerProcess(pki, tmp_path / "root", tree, db_url, args=(), port=port)
    try:
        vmm = server.client("WorkloadManagement/VirtualMachineManager", "admin-proxy")
        monitoring = server.client("WorkloadManagement/JobMonitoring", "alice-proxy")
        ids = server.client("WorkloadManagement/JobManager").submitJob(
            jdl(Executable="/bin/sh", Arguments="-c 'echo job %n; sleep 1'", Parameters=6))
        assert len(ids) == 6

        def instances() -> list[dict]:
            page = vmm.getInstances({}, None, 0, 100)
            return [dict(zip(page["ParameterNames"], r)) for r in page["Records"]]

        def log() -> str:
            return "".join(server.output[-30:])

        # Booted on moto, with our tags and user data.
        on_moto = wait_for(lambda: [i for i in instances() if i["Endpoint"] == EC2 and i["EndpointVMID"]], 60,
                           "a VM booted on moto", log)
        first = on_moto[0]
        tags = moto.tags(first["EndpointVMID"])
        assert tags["vmdirac-instance"] == first["Name"] and tags["vmdirac-deployment"]
        user_data = moto.user_data(first["EndpointVMID"])
        assert len(user_data) > 100 and first["Name"].encode() in user_data, user_data[:200]

        # Nothing runs in moto's VMs: no heartbeat, so Stalled, then terminated at the endpoint.
        def stalled_and_terminated():
            stalled = [i for i in instances() if i["Endpoint"] == EC2 and i["Status"] in ("Stalled", "Halted")]
            return [i for i in stalled if moto.state(i["EndpointVMID"]) == "terminated"]

        gone = wait_for(stalled_and_terminated, 60, "a moto VM Stalled and terminated in moto", log, interval=0.5)
        history = [h["Status"] for h in vmm.getInstanceHistory(gone[0]["InstanceID"])]
        assert "Stalled" in history and "Running" not in history, history

        # The local cloud's VMs run every job.
        wait_for(lambda: monitoring.getJobStats("Status", {}) == {"Done": 6}, 120, "6 jobs Done", log, interval=0.5)
        assert {i["Endpoint"] for i in instances() if i["Status"] in ("Running", "Halted") and
                i["Endpoint"] == ENDPOINT}, instances()
    finally:
        assert server.stop() == 0, "".join(server.output[-40:])
        for inst in moto.instances():
            if inst["State"]["Name"] != "terminated":
                moto.ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
