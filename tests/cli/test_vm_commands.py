"""The dirac-vm-* commands as child processes, against a real server process, as operators do."""

from __future__ import annotations

import os
import re
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, base_tree, command
from tests.processes import ServerProcess
from tests.services.wms_fixtures import jdl, wms_tree
from vmdirac.core.config import deep_merge
from vmdirac.core.db import make_engine
from vmdirac.db.endpoint_status_db import EndpointStatusDB
from vmdirac.db.virtual_machine_db import VirtualMachineDB

SERVICES = ("JobManager", "JobMonitoring", "Matcher", "VirtualMachineManager")
TREE = deep_merge(wms_tree(), {
    "Systems": {"WorkloadManagement": {"Services": {"VirtualMachineManager": {}}}},
    "Registry": {"Groups": {"other_pilot": {"VO": "othervo", "Properties": ["GenericPilot"]}}},
    "Resources": {"Sites": {"Site1": {"Cloud": {"cloud1": {"MaxInstances": 8, "Priority": 2,
                                                           "Images": {"el9": {"Cores": 1}}}}}}},
    "Operations": {"Defaults": {"VirtualMachines": {"RunningPods": {
        "el9": {"Image": "el9", "Endpoints": ["Site1/cloud1"], "MaxInstances": 4, "MaxBootsPerCycle": 2},
        "other": {"Image": "el9", "Endpoints": ["Site1/cloud1"], "PilotGroup": "other_pilot"}}}}},
})


@dataclass
class Shell:
    """A server process, its database, and a user's shell pointed at it."""

    server: ServerProcess
    db: VirtualMachineDB
    pki: object
    env: dict
    work: Path

    def run(self, name: str, *args: object, proxy: str = "admin-proxy") -> subprocess.CompletedProcess:
        env = {**self.env, "X509_USER_PROXY": self.pki.path(proxy)}
        return subprocess.run([command(name), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=120, cwd=self.work)

    def ok(self, name: str, *args: object, proxy: str = "admin-proxy") -> list[list[str]]:
        """The command's output lines, each split into its columns (two spaces or more apart)."""
        done = self.run(name, *args, proxy=proxy)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return [re.split(r"\s{2,}", line.strip()) for line in done.stdout.splitlines()]

    def instance(self, pod: str = "el9", running: bool = True) -> int:
        instance_id, _name = self.db.new_instance(pod, "el9", "Site1/cloud1", "Site1")
        if running:
            self.db.set_submitted(instance_id, f"vm-{instance_id}", ["192.0.2.10"], ["10.0.0.10"])
            self.db.heartbeat(instance_id, 0.75, 1, 2, 2048, 3723.0)
        return instance_id


def publish_urls(server: ServerProcess) -> None:
    cs = server.client("Configuration/Server", "alice-proxy2")
    answer = cs.getCompressedData()
    tree = yaml.safe_load(zlib.decompress(answer["data"]))
    tree["Systems"]["WorkloadManagement"]["URLs"] = {s: server.url(f"WorkloadManagement/{s}") for s in SERVICES}
    cs.commitNewData(yaml.safe_dump(tree), answer["version"], "service URLs of the test server")


@pytest.fixture
def shell(pki, tmp_path, db_url):
    server = ServerProcess(pki, tmp_path / "server", base_tree(TREE), db_url)
    engine = make_engine(db_url)
    try:
        publish_urls(server)
        settings = tmp_path / "dirac.yaml"
        settings.write_text(yaml.safe_dump({
            "ConfigurationServer": [server.url("Configuration/Server")], "CACertificates": str(pki.ca_dir)}))
        home, work = tmp_path / "home", tmp_path / "work"
        home.mkdir()
        work.mkdir()
        env = {**{k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"}, "HOME": str(home),
               "VMDIRAC_CLIENT_CONFIG": str(settings), "PYTHONPATH": str(ROOT)}
        db = VirtualMachineDB(engine)
        db.create_tables()
        yield Shell(server, db, pki, env, work)
    finally:
        server.stop()
        engine.dispose()


def test_instances_are_listed_filtered_and_limited_to_the_users_vo(shell: Shell):
    running, fresh = shell.instance(), shell.instance(running=False)
    foreign = shell.instance("other")
    header, *rows = shell.ok("dirac-vm-instances", proxy="alice-proxy")
    assert header == ["ID", "Name", "Pod", "Endpoint", "Status", "Cmd", "VM ID", "IP", "Load", "Jobs", "Uptime",
                      "Last Update (UTC)", "Error"]
    assert [r[:5] for r in rows] == [[str(running), f"el9-{running}", "el9", "Site1/cloud1", "Running"],
                                     [str(fresh), f"el9-{fresh}", "el9", "Site1/cloud1", "New"]]
    assert rows[0][5:10] == [f"vm-{running}", "192.0.2.10", "0.75", "1", "01:02:03"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[0][10])
    assert str(foreign) not in [r[0] for r in rows]
    _h, *only = shell.ok("dirac-vm-instances", "--status", "New,Halted", "--pod", "el9")
    assert [r[0] for r in only] == [str(fresh)]
    assert shell.ok("dirac-vm-instances", "--pod", "nothing") == [["No instance found."]]


def test_history_shows_every_change_with_its_reason(shell: Shell):
    instance_id = shell.instance()
    header, *rows = shell.ok("dirac-vm-instance-history", instance_id)
    assert header == ["Time (UTC)", "Status", "Load", "Jobs", "Files", "Transferred", "Reason"]
    assert [r[1:] for r in rows] == [
        ["New", "0.00", "0", "0", "0 B", "to be booted"],
        ["Submitted", "0.00", "0", "0", "0 B", "the endpoint accepted the boot"],
        ["Running", "0.75", "1", "2", "2.0 KiB", "heartbeat"]]
    done = shell.run("dirac-vm-instance-history", shell.instance("other"), proxy="alice-proxy")
    assert done.returncode == 1 and re.fullmatch(r"ERROR: instance \d+ does not exist or is not of your VO\n",
                                                 done.stderr)


def test_operators_stop_instances_one_result_line_each(shell: Shell):
    running, fresh, other = shell.instance(), shell.instance(running=False), shell.instance()
    done = shell.run("dirac-vm-instance-stop", running, f"{fresh},999999")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"Instance {running}: Stopping (takes no new job, halts when its jobs end)",
        f"Instance {fresh}: Halted (halted)"]
    assert done.stderr == "ERROR: instance 999999 does not exist or is not of your VO\n"
    assert shell.db.get(running).pending_command == "stop"
    out = shell.ok("dirac-vm-instance-stop", running, other, "--force")
    assert out == [[f"Instance {running}: Stopping (halts at its next heartbeat)"],
                   [f"Instance {other}: Stopping (halts at its next heartbeat)"]]
    assert shell.db.heartbeat(other, 0.1, 0, 0, 0, 10.0) == "halt"
    refused = shell.run("dirac-vm-instance-stop", running, proxy="alice-proxy")
    assert refused.returncode == 1 and refused.stderr.startswith("ERROR: ")
    assert "needs one of Operator" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1


def test_pods_show_waiting_work_vms_and_caps(shell: Shell):
    for _ in range(2):
        shell.instance()
    shell.instance(running=False)
    stopping = shell.instance()
    shell.db.request_stop(stopping)
    shell.server.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(jdl())
    lines = shell.ok("dirac-vm-pods")
    blank = lines.index([""])
    header, *pods = lines[:blank]
    assert header == ["Pod", "VO", "Image", "Policy", "Waiting", "Booting", "Running", "Stopping", "Stalled", "Max",
                      "Boots/cycle"]
    # The pod of another VO ("other") is not the operator's to see.
    assert pods == [["el9", "vmdirac", "el9", "Elastic", "1", "1", "2", "1", "0", "4", "2"]]
    assert lines[blank + 1:] == [
        ["Endpoint", "Type", "Priority", "VMs", "Max", "Pods", "Failures", "Backed off until", "Last error"],
        ["Site1/cloud1", "local", "2", "4", "8", "el9", "0", "-", "-"]]


def test_pods_say_why_an_endpoint_gets_no_vms(shell: Shell):
    status = EndpointStatusDB(shell.db.engine)
    status.create_tables()
    for _ in range(3):
        status.failed("Site1/cloud1", "QuotaError: instances quota exceeded (10 of 10)", 120.0)
    lines = shell.ok("dirac-vm-pods")
    endpoint = lines[lines.index([""]) + 2]
    assert endpoint[:7] == ["Site1/cloud1", "local", "2", "0", "8", "el9", "3"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", endpoint[7])
    assert endpoint[8] == "QuotaError: instances quota exceeded (10 of 10)"
    pod = shell.server.client("WorkloadManagement/VirtualMachineManager", "admin-proxy").getRunningPods()[0]
    assert pod["Reason"] == "Site1/cloud1: QuotaError: instances quota exceeded (10 of 10) (3 in a row)"
    status.succeeded("Site1/cloud1")
    endpoint = shell.ok("dirac-vm-pods")[-1]
    assert endpoint[6:] == ["0", "-", "-"]


def test_mistakes_are_one_line_errors_and_help_has_an_example(shell: Shell):
    for args, message in ((("dirac-vm-instance-stop", "abc"), "ERROR: 'abc' is not an instance id"),
                          (("dirac-vm-instance-stop",), "ERROR: the following arguments are required: ID"),
                          (("dirac-vm-instances", "--status", "Sleeping"), "ERROR: unknown instance status 'Sleeping'"),
                          (("dirac-vm-instance-history", "0"), "ERROR: '0' is not an instance id")):
        done = shell.run(*args)
        assert done.returncode == 1 and done.stdout == "" and done.stderr.startswith(message), done.stderr
        assert len(done.stderr.splitlines()) == 1
    for name in ("dirac-vm-instances", "dirac-vm-instance-history", "dirac-vm-instance-stop", "dirac-vm-pods"):
        done = shell.run(name, "--help")
        assert done.returncode == 0 and f"example:\n  $ {name}" in done.stdout
