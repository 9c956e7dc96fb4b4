"""Plain images: the scheduler contextualizes the VM over SSH (a real sshd on loopback).

The local cloud's VM boots with no user data; the scheduler waits for SSH, installs the files
and runs the start script under the VM's root, and the VM goes Submitted -> Wait_ssh_context ->
Contextualizing. The image's Python is a stand-in that records how the monitor was started.
"""

from __future__ import annotations

import pytest
import yaml

from tests.contexts.test_ssh import _missing, fake_monitor, sshd  # noqa: F401  (fixture)
from tests.services.wms_fixtures import WMS_SERVICES, jdl
from tests.vm.test_vm_end_to_end import ENDPOINT, SITE, cloud_tree
from vmdirac.agents.vm_scheduler import VirtualMachineScheduler, state_dir
from vmdirac.core.config import deep_merge
from vmdirac.db.virtual_machine_db import VirtualMachineDB

pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "-")


def test_plain_images_are_contextualized_over_ssh(sshd, start_server, tmp_path):  # noqa: F811
    python, record = fake_monitor(tmp_path)
    image = {"Context": "ssh", "Python": str(python), "SSHUser": sshd.user, "SSHPort": sshd.port,
             "SSHKeyFile": sshd.key_file, "SSHRemoteRoot": "{state_dir}/{vm_id}/root"}
    tree = deep_merge(cloud_tree(1), {"Resources": {"Sites": {SITE: {"Cloud": {"local": {"Images": {"el9": image}}}}}}})
    server = start_server(f"sqlite:///{tmp_path / 'db.sqlite'}",
                          WMS_SERVICES + ["WorkloadManagement/VirtualMachineManager"], tree)
    server.client("WorkloadManagement/JobManager").submitJob(jdl())
    agent = VirtualMachineScheduler(server.context)
    agent.initialize()
    try:
        agent.execute()
        [inst] = VirtualMachineDB(server.context.engine).instances()
        assert inst.status == "Contextualizing", inst.error_message
        seen = [h.status for h in VirtualMachineDB(server.context.engine).history(inst.instance_id)]
        assert seen == ["New", "Submitted", "Wait_ssh_context", "Contextualizing"]
        root = state_dir(server.context, ENDPOINT) / inst.endpoint_vm_id / "root"
        config = yaml.safe_load((root / "etc/vmdirac/vmdirac-vm.yaml").read_text())
        assert config["Instance"]["ID"] == inst.instance_id and config["Instance"]["Site"] == SITE
        assert (root / "etc/vmdirac/vm-proxy.pem").stat().st_mode & 0o077 == 0
        started = record.read_text()
        assert "-m vmdirac.cli.vm_monitor --config" in started and f"root={root}" in started
        # A second cycle leaves it alone: the monitor, once up, declares it Running.
        agent.execute()
        assert VirtualMachineDB(server.context.engine).get(inst.instance_id).status == "Contextualizing"
    finally:
        for drv in agent.drivers.values():
            for node in drv.list_nodes():
                drv.terminate(node.vm_id)


def test_a_refused_key_is_the_vms_error(sshd, start_server, tmp_path):  # noqa: F811
    other_key = tmp_path / "other"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    image = {"Context": "ssh", "SSHUser": sshd.user, "SSHPort": sshd.port, "SSHKeyFile": str(other_key)}
    tree = deep_merge(cloud_tree(1), {"Resources": {"Sites": {SITE: {"Cloud": {"local": {"Images": {"el9": image}}}}}}})
    server = start_server(f"sqlite:///{tmp_path / 'db.sqlite'}",
                          WMS_SERVICES + ["WorkloadManagement/VirtualMachineManager"], tree)
    server.client("WorkloadManagement/JobManager").submitJob(jdl())
    agent = VirtualMachineScheduler(server.context)
    agent.initialize()
    try:
        agent.execute()
        [inst] = VirtualMachineDB(server.context.engine).instances()
        assert inst.status == "Error" and "SSH contextualization" in inst.error_message
        assert all(n.state == "terminated" for d in agent.drivers.values() for n in d.list_nodes())
    finally:
        for drv in agent.drivers.values():
            for node in drv.list_nodes():
                drv.terminate(node.vm_id)
