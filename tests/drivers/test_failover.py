"""The real VirtualMachineScheduler with a real DB and each cloud driver: an endpoint that fails 3
times in a row (refused credentials) is backed off with a growing delay, while the pod's second
endpoint (same emulator, good credentials) takes the VMs, from the very cycle of each failure."""

from __future__ import annotations

import time

from tests.clouds.harness import Cloud, cloud, cloud_emulators  # noqa: F401  (fixtures)
from tests.services.wms_fixtures import WMS_SERVICES, jdl
from tests.vm.test_vm_end_to_end import POD, SITE, cloud_tree
from vmdirac.agents.vm_scheduler import VirtualMachineScheduler
from vmdirac.core.config import deep_merge
from vmdirac.db.virtual_machine_db import VirtualMachineDB

BAD, GOOD = f"{SITE}/failing", f"{SITE}/working"
BACKOFF = 60.0


def test_failing_endpoint_is_backed_off_and_the_other_takes_the_vms(cloud: Cloud, start_server, db_url):
    tree = deep_merge(cloud_tree(1), {
        "Resources": {"Sites": {SITE: {"Cloud": {
            "failing": cloud.tree_options("bad", Priority=2, MaxInstances=1),
            "working": cloud.tree_options("good", Priority=1, MaxInstances=10)}}}},
        "Operations": {"Defaults": {"VirtualMachines": {"RunningPods": {POD: {
            "Endpoints": [BAD, GOOD], "MaxInstances": 10, "MaxBootsPerCycle": 2}}}}},
        "Systems": {"WorkloadManagement": {"Agents": {"VirtualMachineScheduler": {"BackoffSeconds": BACKOFF}}}},
    })
    server = start_server(db_url, WMS_SERVICES + ["WorkloadManagement/VirtualMachineManager"], tree)
    server.client("WorkloadManagement/JobManager").submitJob(jdl(Parameters=10))
    vmdb = VirtualMachineDB(server.context.engine)
    agent = VirtualMachineScheduler(server.context)
    agent.initialize()
    assert agent.options.BackoffSeconds == BACKOFF

    def on(endpoint: str, status: str) -> list:
        return [i for i in vmdb.instances() if i.endpoint == endpoint and i.status == status]

    try:
        delays = []
        for cycle in range(3):
            agent.backoff.until.pop(BAD, None)       # as if its delay had passed: it is tried again
            agent.execute()
            assert len(on(BAD, "Error")) == cycle + 1
            # The boot the failing endpoint could not take went to the other in the same cycle.
            assert len(on(GOOD, "Submitted")) == 2 * (cycle + 1)
            delays.append(agent.backoff.until[BAD] - time.monotonic())
        assert agent.backoff.failures[BAD] == 3
        assert delays[0] < delays[1] < delays[2] and delays[2] > 3.5 * BACKOFF       # 60, 120, 240 s
        assert all("AuthError" in i.error_message for i in on(BAD, "Error"))
        booted = len(on(GOOD, "Submitted"))
        assert booted == 6
        agent.execute()                                                            # backed off: not tried
        assert len(on(BAD, "Error")) == 3
        assert len(on(GOOD, "Submitted")) > booted                                 # the other takes its share
        submitted = {i.endpoint_vm_id for i in on(GOOD, "Submitted")}
        assert {n.vm_id for n in agent.drivers[GOOD].list_nodes()} == submitted    # really at the endpoint
    finally:
        for name, drv in agent.drivers.items():
            if name == GOOD:
                for node in drv.list_nodes():
                    drv.terminate(node.vm_id)
