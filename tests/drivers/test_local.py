"""The local cloud's driver contract: boot, status, list, user data, terminate, and nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vmdirac.contexts import VMFile
from vmdirac.contexts.cloudinit import cloud_config, multipart
from vmdirac.drivers.base import DEPLOYMENT_TAG, INSTANCE_TAG, BootRequest, NodeNotFound, NodeState, make_driver
from vmdirac.drivers.local import LocalDriver
from vmdirac.drivers.local_vm import vm_processes
from vmdirac.vm.config import Endpoint, EndpointOptions, ImageOptions
from tests.waiting import wait_for

IMAGE = ImageOptions(ImageID="local-image", Cores=2)

# A VM that records its environment, leaves a daemon behind and a process in a session of its
# own (as the pilot's payloads are): terminate must end them all.
SCRIPT = """#!/bin/sh
env | grep -E '^(VMDIRAC_|HOME=|TMPDIR=)' | sort > env.txt
command -v dirac-vm-monitor > monitor-command.txt
nohup sleep 600 >/dev/null 2>&1 &
echo $! > daemon.pid
python3 -c "import subprocess; print(subprocess.Popen(['sleep', '600'], start_new_session=True).pid)" > escaped.pid
echo booted > booted
"""


def endpoint(name: str = "Local.Test/local", max_instances: int = 3, **driver) -> Endpoint:
    return Endpoint(name, name.split("/")[0], EndpointOptions(Type="local", MaxInstances=max_instances,
                                                             Driver={"KillGrace": 2, **driver}), {"img": IMAGE})


def user_data(script: str = SCRIPT) -> bytes:
    files = [VMFile("/etc/vmdirac/secret.pem", b"-----BEGIN SECRET-----\n", 0o600),
             VMFile("/var/lib/thing/config.yaml", b"a: 1\n", 0o644)]
    return multipart([(cloud_config(files), "cloud-config", "config"), (script, "x-shellscript", "start.sh")])



def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def driver(tmp_path):
    drv = make_driver(endpoint(), "test-deployment", tmp_path / "vms")
    assert isinstance(drv, LocalDriver)
    yield drv
    for node in drv.list_nodes():
        drv.terminate(node.vm_id)


def test_boot_status_list_user_data_terminate(driver):
    data = user_data()
    node = driver.boot(BootRequest("vm-test-1", IMAGE, data, {"pod": "p1"}))
    assert node.state == NodeState.RUNNING and node.name == "vm-test-1"
    assert node.tags == {"pod": "p1", DEPLOYMENT_TAG: "test-deployment", INSTANCE_TAG: "vm-test-1"}
    vm_dir = driver.vm_dir(node.vm_id)
    wait_for(lambda: (vm_dir / "booted").exists(), 30, "the VM's start script")

    assert driver.status(node.vm_id).state == NodeState.RUNNING
    (listed,) = driver.list_nodes()
    assert (listed.vm_id, listed.name, listed.tags[INSTANCE_TAG]) == (node.vm_id, "vm-test-1", "vm-test-1")
    assert driver.user_data(node.vm_id) == data

    # cloud-init's work, inside the VM's directory only.
    secret = vm_dir / "root/etc/vmdirac/secret.pem"
    assert secret.read_bytes() == b"-----BEGIN SECRET-----\n" and secret.stat().st_mode & 0o777 == 0o600
    assert (vm_dir / "root/var/lib/thing/config.yaml").read_text() == "a: 1\n"
    env = dict(line.split("=", 1) for line in (vm_dir / "env.txt").read_text().splitlines())
    assert env["VMDIRAC_VM_ROOT"] == str(vm_dir / "root")
    assert env["VMDIRAC_HALT_FILE"] == str(vm_dir / "halt")
    assert env["VMDIRAC_VM_ID"] == node.vm_id and env["VMDIRAC_INSTANCE_NAME"] == "vm-test-1"
    assert json.loads(env["VMDIRAC_TAGS"])[DEPLOYMENT_TAG] == "test-deployment"
    assert env["HOME"].startswith(str(vm_dir)) and env["TMPDIR"].startswith(str(vm_dir))
    assert not any(k.startswith("VMDIRAC_DB") for k in env)
    # Our commands are found beside the interpreter that runs the VM (a virtualenv's bin).
    assert (vm_dir / "monitor-command.txt").read_text().strip() == str(Path(sys.executable).parent / "dirac-vm-monitor")

    pgid = driver.leader_pid(node.vm_id)
    daemon = int((vm_dir / "daemon.pid").read_text())
    escaped = int(wait_for(lambda: (vm_dir / "escaped.pid").read_text().strip(), 10, "escaped.pid"))
    assert os.getpgid(daemon) == pgid and os.getsid(escaped) == escaped    # one in the group, one not
    assert {daemon, escaped} <= {p.pid for p in vm_processes(pgid)}

    driver.terminate(node.vm_id)

    assert driver.status(node.vm_id).state == NodeState.TERMINATED
    assert driver.list_nodes() == []
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not alive(daemon) and not alive(escaped)
    assert (vm_dir / "logs/local-vm.log").exists()          # the directory stays, for the logs
    driver.terminate(node.vm_id)                            # a VM already gone is fine


def test_boot_is_idempotent_by_instance_name(driver):
    first = driver.boot(BootRequest("vm-same", IMAGE, user_data("#!/bin/sh\ntrue\n"), {}))
    again = driver.boot(BootRequest("vm-same", IMAGE, user_data("#!/bin/sh\ntrue\n"), {}))
    assert again.vm_id == first.vm_id
    assert [n.vm_id for n in driver.list_nodes()] == [first.vm_id]


def test_other_processes_and_drivers_see_the_same_vms(driver, tmp_path):
    node = driver.boot(BootRequest("vm-shared", IMAGE, user_data("#!/bin/sh\ntrue\n"), {}))
    # Another driver object on the same state directory (the reconciler's), in another process.
    code = ("import sys; from pathlib import Path; from tests.drivers.test_local import endpoint; "
            "from vmdirac.drivers.local import LocalDriver; "
            "d = LocalDriver(endpoint(), 'test-deployment', Path(sys.argv[1])); "
            "print(' '.join(f'{n.name}:{n.state}' for n in d.list_nodes())); "
            "print(d.status(sys.argv[2]).state)")
    out = subprocess.run([sys.executable, "-c", code, str(driver.state_dir), node.vm_id], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["vm-shared:running", "running"]
    # Another deployment, or another endpoint, does not see it.
    assert LocalDriver(endpoint(), "other-deployment", driver.state_dir).list_nodes() == []
    assert LocalDriver(endpoint("Local.Test/other"), "test-deployment", driver.state_dir).list_nodes() == []
    with pytest.raises(NodeNotFound):
        LocalDriver(endpoint("Local.Test/other"), "test-deployment", driver.state_dir).status(node.vm_id)


def test_the_vm_halts_itself_through_its_halt_file(driver):
    script = "#!/bin/sh\nnohup sleep 600 >/dev/null 2>&1 &\ntouch \"$VMDIRAC_HALT_FILE\"\n"
    node = driver.boot(BootRequest("vm-halting", IMAGE, user_data(script), {}))
    pgid = driver.leader_pid(node.vm_id)
    wait_for(lambda: driver.status(node.vm_id).state == NodeState.TERMINATED, 30, "the VM to end itself")
    wait_for(lambda: group_gone(pgid), 10, "its process group to be gone")
    halted = json.loads((driver.vm_dir(node.vm_id) / "halted").read_text())
    assert halted["reason"] == "halted by the VM (halt file)"
    assert driver.list_nodes() == []


def test_a_vm_cannot_write_outside_its_directory(driver, tmp_path):
    target = tmp_path / "outside.txt"
    escape = "/.." * 30 + str(target)
    data = multipart([(cloud_config([VMFile(escape, b"pwned\n")]), "cloud-config", "c")])
    node = driver.boot(BootRequest("vm-escape", IMAGE, data, {}))
    wait_for(lambda: driver.status(node.vm_id).state == NodeState.TERMINATED, 30, "the VM to fail its boot")
    assert not target.exists()
    assert "escapes the VM" in json.loads((driver.vm_dir(node.vm_id) / "halted").read_text())["reason"]


def test_a_vm_recorded_but_never_started_does_not_linger(driver):
    vm_id = "f" * 32
    (driver.state_dir / vm_id).mkdir()
    record = {"vm_id": vm_id, "name": "vm-crashed-boot", "endpoint": driver.endpoint.name, "state": "pending",
              "pid": None, "tags": {DEPLOYMENT_TAG: "test-deployment"}, "created": "2020-01-01T00:00:00+00:00"}
    (driver.state_dir / vm_id / "node.json").write_text(json.dumps(record))
    assert driver.status(vm_id).state == NodeState.TERMINATED and driver.list_nodes() == []
    record["created"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    (driver.state_dir / vm_id / "node.json").write_text(json.dumps(record))
    assert driver.status(vm_id).state == NodeState.PENDING            # a boot in progress


def test_unknown_vms_and_limits(driver):
    with pytest.raises(NodeNotFound):
        driver.status("0" * 32)
    with pytest.raises(NodeNotFound):
        driver.status("../../etc")
    driver.terminate("0" * 32)
    assert driver.limits().max_instances == 3 and driver.limits().used_instances == 0
    driver.boot(BootRequest("vm-limits", IMAGE, user_data("#!/bin/sh\ntrue\n"), {}))
    assert driver.limits().used_instances == 1
    capped = LocalDriver(endpoint(MaxCores=8), "test-deployment", driver.state_dir)
    assert (capped.limits().max_cores, capped.limits().used_cores) == (8, 2)


def test_terminate_ends_a_vm_that_ignores_sigterm(driver):
    script = "#!/bin/sh\nnohup sh -c 'trap \"\" TERM; while :; do sleep 1; done' >/dev/null 2>&1 &\n"
    node = driver.boot(BootRequest("vm-stubborn", IMAGE, user_data(script), {}))
    pgid = driver.leader_pid(node.vm_id)
    wait_for(lambda: len(vm_processes(pgid)) >= 2, 30, "the stubborn process")
    driver.terminate(node.vm_id)
    assert group_gone(pgid)
    assert driver.status(node.vm_id).state == NodeState.TERMINATED


def test_a_vm_killed_from_outside_is_terminated(driver):
    node = driver.boot(BootRequest("vm-killed", IMAGE, user_data("#!/bin/sh\ntrue\n"), {}))
    pgid = driver.leader_pid(node.vm_id)
    wait_for(lambda: (driver.vm_dir(node.vm_id) / "logs/part-000.log").exists(), 30, "the boot")
    os.killpg(pgid, signal.SIGKILL)
    wait_for(lambda: group_gone(pgid), 10, "the group to die")       # reaped by the driver that booted it
    assert driver.status(node.vm_id).state == NodeState.TERMINATED


def test_a_vm_whose_boot_died_before_recording_its_pid_records_itself(driver):
    """The booting process killed between starting the VM and writing its pid: the VM writes
    it, so the driver still sees it running and can end it (no VM runs unaccounted)."""
    vm_id = "e" * 32
    vm_dir = driver.state_dir / vm_id
    (vm_dir / "logs").mkdir(parents=True)
    (vm_dir / "user-data").write_bytes(user_data("#!/bin/sh\necho booted > booted\n"))
    record = {"vm_id": vm_id, "name": "vm-orphaned-boot", "endpoint": driver.endpoint.name, "state": "pending",
              "pid": None, "pgid": None, "tags": {DEPLOYMENT_TAG: "test-deployment"},
              "created": "2020-01-01T00:00:00+00:00"}   # long ago: pid-less, it would count as gone
    (vm_dir / "node.json").write_text(json.dumps(record))
    proc = subprocess.Popen([sys.executable, "-m", "vmdirac.drivers.local_vm", str(vm_dir)], cwd=vm_dir,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: json.loads((vm_dir / "node.json").read_text()).get("pid"), 30, "the VM to record itself")
        node = json.loads((vm_dir / "node.json").read_text())
        assert (node["pid"], node["pgid"], node["state"]) == (proc.pid, proc.pid, "running")
        assert driver.status(vm_id).state == NodeState.RUNNING
        assert [n.vm_id for n in driver.list_nodes()] == [vm_id]
        driver.terminate(vm_id)
        assert proc.wait(10) == 0 and group_gone(proc.pid)
        assert driver.status(vm_id).state == NodeState.TERMINATED
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_frozen_vm_acts_on_terminate(driver):
    node = driver.boot(BootRequest("vm-frozen", IMAGE, user_data("#!/bin/sh\nsleep 600 &\n"), {}))
    pgid = driver.leader_pid(node.vm_id)
    wait_for(lambda: len(vm_processes(pgid)) >= 2, 30, "the VM's processes")
    os.killpg(pgid, signal.SIGSTOP)
    driver.terminate(node.vm_id)
    assert group_gone(pgid)
    # Woken by SIGCONT, the VM's init acted on SIGTERM and ended its processes itself (it writes
    # why); left stopped, it would have waited for SIGKILL and written nothing.
    halted = json.loads((driver.vm_dir(node.vm_id) / "halted").read_text())
    assert halted["reason"] == "terminated (SIGTERM)"
