"""VirtualMachineManager over HTTPS, with per-VM credentials issued by logic.vm_credentials.

A VM's credential reports for its own instance and nothing else: it cannot heartbeat, stop or
match as another instance, cannot call the operators' methods, and has none of the TrustedHost
powers of the identity it is derived from.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from tests.pki import ALICE, BOB, REGISTRY
from tests.services.wms_fixtures import WMS_SERVICES, jdl, wms_tree
from vmdirac.core import x509 as X
from vmdirac.core.client import ClientCredentials, RPCClient
from vmdirac.core.config import deep_merge
from vmdirac.core.exceptions import BadRequest, IllegalTransition, InvalidArgument, NotAuthorized
from vmdirac.db.virtual_machine_db import VirtualMachineDB
from vmdirac.logic.vm_credentials import issue_credential

VMM = "WorkloadManagement/VirtualMachineManager"
# The server's host is the pilot identity: it needs the VM properties (a full list: merges replace lists).
TREE = deep_merge(wms_tree(), {
    "Registry": {
        "Groups": {"other_pilot": {"VO": "othervo", "Properties": ["GenericPilot"]},
                   "other_user": {"VO": "othervo", "Properties": ["NormalUser"]},
                   "other_admin": {"VO": "othervo", "Properties": ["NormalUser", "Operator"]}},
        "Users": {"bob": {"DN": BOB, "Groups": ["dirac_user", "other_user", "other_admin"]}},
        "Hosts": {"localhost": {"DN": REGISTRY["Hosts"]["localhost"]["DN"],
                                "Properties": ["TrustedHost", "CSAdministrator", "GenericPilot", "VmRpcOperation"]}},
    },
    "Systems": {"WorkloadManagement": {"Services": {"VirtualMachineManager": {}}}},
    "Resources": {"Sites": {"Site1": {"Cloud": {"cloud1": {"Images": {"el9": {}}}}}}},
    # Who sees which VMs follows the pods' VOs (their PilotGroup's).
    "Operations": {"Defaults": {"VirtualMachines": {"CredentialHours": 2, "RunningPods": {
        "pod1": {"Image": "el9", "Endpoints": ["Site1/cloud1"], "PilotGroup": "dirac_pilot"},
        "pod2": {"Image": "el9", "Endpoints": ["Site1/cloud1"], "PilotGroup": "other_pilot"}}}}},
})


class Cloud:
    """A server with the job services and the VirtualMachineManager, and its VMs' credentials."""

    def __init__(self, server, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self.db = VirtualMachineDB(server.context.engine)

    def instance(self, pod: str = "pod1", status: str = "Submitted") -> int:
        """An instance as the scheduler records it (its VO comes from the pod's configuration)."""
        instance_id, _name = self.db.new_instance(pod, "el9", "Site1/cloud1", "Site1")
        if status != "New":
            self.db.set_submitted(instance_id, f"vm-{instance_id}", ["192.0.2.1"], ["10.0.0.1"])
        return instance_id

    def credential(self, instance_id: int, group: str = "dirac_pilot") -> str:
        path = self.tmp / f"vm-{instance_id}-{group}.pem"
        X.write_private(path, issue_credential(self.server.context, instance_id, group, 1))
        return str(path)

    def vm(self, cred: str, service: str = VMM, delegate: tuple[str, str] | None = None) -> RPCClient:
        creds = ClientCredentials(cred, None, str(self.server.pki.ca_dir), delegate=delegate)
        return RPCClient(service, creds, urls=[self.server.url(service)], rounds=1)

    def user(self, proxy: str = "admin-proxy", service: str = VMM) -> RPCClient:
        return self.server.client(service, proxy)

    def sub_proxy(self, cred: str, cn: str, group: str | None = None) -> str:
        """What a VM could make from its own credential: a proxy of it, naming any CN."""
        data = Path(cred).read_bytes()
        chain, key = X.load_certificates(data), X.load_key(data)
        _p, sub_key, sub_chain = X.make_proxy(chain, key, 1, group=group, cn=cn)
        path = self.tmp / f"sub-{cn}-{group}.pem"
        X.write_private(path, X.proxy_pem(sub_chain, sub_key))
        return str(path)


@pytest.fixture
def cloud(start_server, db_url, tmp_path, pki):
    server = start_server(db_url, WMS_SERVICES + ["WorkloadManagement/VirtualMachineManager"], TREE)
    # bob in other VO groups: proxies made here (the session PKI has none).
    for group in ("other_user", "other_admin"):
        cert = X.load_certificates(Path(pki.path("bobcert.pem")).read_bytes())
        key = X.load_key(Path(pki.path("bobkey.pem")).read_bytes())
        _p, pkey, chain = X.make_proxy(cert, key, 1, group=group)
        X.write_private(tmp_path / f"bob-{group}", X.proxy_pem(chain, pkey))
    return Cloud(server, tmp_path)


def bob(cloud: Cloud, group: str) -> RPCClient:
    creds = ClientCredentials(str(cloud.tmp / f"bob-{group}"), None, str(cloud.server.pki.ca_dir))
    return RPCClient(VMM, creds, urls=[cloud.server.url(VMM)])


# ---------------------------------------------------------------- a VM's life

def test_a_vm_declares_itself_heartbeats_obeys_a_stop_and_halts(cloud: Cloud):
    instance_id = cloud.instance()
    vm = cloud.vm(cloud.credential(instance_id))
    assert vm.whoami()["instanceID"] == instance_id
    answer = vm.declareInstanceRunning("10.0.0.5", "192.0.2.5")
    assert answer == {"InstanceID": instance_id, "Name": f"pod1-{instance_id}", "Status": "Running",
                      "PendingCommand": ""}
    assert vm.instanceHeartBeat(0.8, 2, 3, 4096, 600.0) == {"command": ""}
    assert cloud.user().stopInstance([instance_id]) == {"Successful": [instance_id], "Failed": {},
                                                        "Statuses": {str(instance_id): "Stopping"}}
    assert vm.instanceHeartBeat(0.4, 1, 3, 4096, 900.0) == {"command": "stop"}
    assert cloud.user().stopInstance(instance_id, True)["Statuses"] == {str(instance_id): "Stopping"}
    assert vm.instanceHeartBeat(0.4, 1, 3, 4096, 1200.0) == {"command": "halt"}
    assert vm.declareInstanceHalting() == {"InstanceID": instance_id, "Status": "Halted"}
    with pytest.raises(IllegalTransition, match="is Halted"):
        vm.instanceHeartBeat(0.0, 0, 3, 4096, 1300.0)
    with pytest.raises(IllegalTransition, match="is Halted: no new credential"):
        vm.renewInstanceCredential()
    history = cloud.user().getInstanceHistory(instance_id)
    assert [(h["Status"], h["Reason"]) for h in history] == [
        ("New", "to be booted"), ("Submitted", "the endpoint accepted the boot"),
        ("Running", "declared running by the VM"), ("Running", "heartbeat"),
        ("Stopping", "stop requested by admin@dirac_admin"), ("Stopping", "heartbeat"),
        ("Stopping", "stop requested by admin@dirac_admin (force)"), ("Stopping", "heartbeat"),
        ("Halted", "declared halting by the VM")]
    assert history[3]["Load"] == 0.8 and history[3]["Jobs"] == 2 and isinstance(history[3]["Time"], dt.datetime)
    row = cloud.db.get(instance_id)
    assert (row.private_ip, row.public_ip, row.transferred_bytes) == ("10.0.0.5", "192.0.2.5", 4096)


def test_concurrent_heartbeats_of_many_vms_each_get_their_own_answer(cloud: Cloud):
    from concurrent.futures import ThreadPoolExecutor

    ids = [cloud.instance() for _ in range(12)]
    vms = {i: cloud.vm(cloud.credential(i)) for i in ids}
    for i in ids:
        vms[i].declareInstanceRunning("10.0.0.1")
    cloud.user().stopInstance(ids[:4])
    cloud.user().stopInstance(ids[4:6], True)
    expected = {i: "stop" if i in ids[:4] else "halt" if i in ids[4:6] else "" for i in ids}

    def beats(i: int) -> list[str]:
        return [vms[i].instanceHeartBeat(0.5, 1, n, n, float(n))["command"] for n in range(8)]

    with ThreadPoolExecutor(len(ids)) as pool:
        answers = dict(zip(ids, pool.map(beats, ids)))
    assert answers == {i: [expected[i]] * 8 for i in ids}
    for i in ids:
        assert [h.reason for h in cloud.db.history(i)].count("heartbeat") == 8
        assert cloud.db.get(i).uptime == 7.0


def test_without_a_public_ip_the_endpoints_address_is_kept_and_arguments_are_checked(cloud: Cloud):
    instance_id = cloud.instance()
    vm = cloud.vm(cloud.credential(instance_id))
    vm.declareInstanceRunning("10.0.0.9")
    assert (cloud.db.get(instance_id).public_ip, cloud.db.get(instance_id).private_ip) == ("192.0.2.1", "10.0.0.9")
    with pytest.raises(InvalidArgument, match="'vm.example' is not an IP address"):
        vm.declareInstanceRunning("vm.example")
    with pytest.raises(BadRequest, match="argument load: expected number, got str"):
        vm.instanceHeartBeat("high", 1, 0, 0, 1.0)
    with pytest.raises(InvalidArgument, match="jobs must not be negative"):
        vm.instanceHeartBeat(0.5, -1, 0, 0, 1.0)


def test_a_renewed_credential_is_short_lived_and_bound_to_the_same_instance(cloud: Cloud):
    instance_id = cloud.instance()
    vm = cloud.vm(cloud.credential(instance_id))
    pem = vm.renewInstanceCredential().encode()
    info = X.chain_info(X.load_certificates(pem))
    assert (info.delegation_cn, info.group, info.identity) == (f"instance-{instance_id}", "dirac_pilot",
                                                                REGISTRY["Hosts"]["localhost"]["DN"])
    hours = (info.not_after - X.utcnow()).total_seconds() / 3600
    assert 1.9 < hours < 2.2                                       # CredentialHours: 2
    assert cloud.db.get(instance_id).credential_expiry == info.not_after.replace(microsecond=0)
    path = cloud.tmp / "renewed.pem"
    X.write_private(path, pem)
    assert cloud.vm(str(path)).instanceHeartBeat(0.1, 0, 0, 0, 5.0) == {"command": ""}


# ---------------------------------------------------------------- what a VM's credential cannot do

def test_a_vm_reports_for_itself_only_even_through_a_sub_proxy_naming_another(cloud: Cloud):
    mine, other = cloud.instance(), cloud.instance()
    cred = cloud.credential(mine)
    for sneaky in (cred, cloud.sub_proxy(cred, f"instance-{other}"),
                   cloud.sub_proxy(cred, f"instance-{other}", group="dirac_pilot")):
        vm = cloud.vm(sneaky)
        assert vm.whoami()["instanceID"] == mine
        assert vm.instanceHeartBeat(0.9, 1, 0, 0, 10.0) == {"command": ""}
    assert cloud.db.get(mine).load == 0.9 and cloud.db.get(other).status == "Submitted"
    assert [h.reason for h in cloud.db.history(other)] == ["to be booted", "the endpoint accepted the boot"]
    vm = cloud.vm(cloud.sub_proxy(cred, f"instance-{other}"))
    vm.declareInstanceHalting()
    assert (cloud.db.get(mine).status, cloud.db.get(other).status) == ("Halted", "Submitted")


def test_a_vm_cannot_call_the_operators_methods(cloud: Cloud):
    mine, other = cloud.instance(), cloud.instance()
    vm = cloud.vm(cloud.credential(mine))
    for call in (lambda: vm.stopInstance([other]), lambda: vm.stopInstance(mine, True),
                 lambda: vm.getInstances({}), lambda: vm.getInstanceHistory(other),
                 lambda: vm.getInstanceCounters("Status"), lambda: vm.getHistoryForPlot(60, 1.0)):
        with pytest.raises(NotAuthorized, match=f"instance {mine} may not call"):
            call()
    assert cloud.db.get(other).pending_command == "" and cloud.db.get(mine).pending_command == ""


def test_a_vm_has_none_of_the_trusted_host_powers_of_its_pilot_identity(cloud: Cloud):
    host = cloud.server.client(VMM, "hostcert.pem", "hostkey.pem", delegate=(ALICE, "dirac_user"))
    assert host.whoami()["username"] == "alice"             # the identity itself may act for a user
    mine = cloud.instance()
    vm = cloud.vm(cloud.credential(mine), delegate=(ALICE, "dirac_user"))
    me = vm.whoami()
    assert (me["instanceID"], me["username"], sorted(me["properties"])) == (
        mine, "localhost", ["GenericPilot", "VmRpcOperation"])
    with pytest.raises(NotAuthorized):
        vm.getInstances({})
    job_id = cloud.user("alice-proxy", "WorkloadManagement/JobManager").submitJob(jdl())
    monitoring = cloud.vm(cloud.credential(mine), "WorkloadManagement/JobMonitoring", delegate=(ALICE, "dirac_user"))
    assert monitoring.getJobsStates([job_id]) == {}          # not alice: her jobs are not visible


def test_callers_without_a_per_vm_credential_cannot_report_for_any_instance(cloud: Cloud):
    instance_id = cloud.instance()
    plain_host = cloud.server.client(VMM, "hostcert.pem", "hostkey.pem", use_host=True)
    with pytest.raises(NotAuthorized, match="is not a VM: this method needs a per-VM credential"):
        plain_host.instanceHeartBeat(0.1, 0, 0, 0, 1.0)
    worker = cloud.server.client(VMM, "workercert.pem", "workerkey.pem", use_host=True)
    with pytest.raises(NotAuthorized, match="is not a VM"):
        worker.declareInstanceRunning("10.0.0.1")
    with pytest.raises(NotAuthorized, match="needs one of GenericPilot, VmRpcOperation"):
        cloud.user("admin-proxy").renewInstanceCredential()
    assert len(cloud.db.history(instance_id)) == 2


def test_a_vm_matches_jobs_of_its_pods_vo_only_and_as_itself(cloud: Cloud):
    mine, other, foreign = cloud.instance(), cloud.instance(), cloud.instance("pod2")
    job_id = cloud.user("alice-proxy", "WorkloadManagement/JobManager").submitJob(jdl())
    outsider = cloud.vm(cloud.credential(foreign, "other_pilot"), "WorkloadManagement/Matcher")
    assert outsider.requestJob({"VO": "vmdirac"}) is None     # its group's VO, whatever it asks
    matcher = cloud.vm(cloud.credential(mine), "WorkloadManagement/Matcher")
    match = matcher.requestJob({"Site": "Site1", "InstanceID": str(other)})
    assert match["JobID"] == job_id
    params = cloud.user("admin-proxy", "WorkloadManagement/JobMonitoring").getJobParameters(job_id)[str(job_id)]
    assert params["InstanceID"] == str(mine)
    stranger = cloud.vm(cloud.credential(other), "WorkloadManagement/JobStateUpdate")
    with pytest.raises(NotAuthorized, match="not run by this pilot"):
        stranger.setJobStatus(job_id, "Running", "Application", "JobWrapper")
    sneaky = cloud.vm(cloud.sub_proxy(cloud.credential(mine), f"instance-{other}"), "WorkloadManagement/JobStateUpdate")
    sneaky.setJobStatus(job_id, "Running", "Application", "JobWrapper")   # itself: the job's own VM


# ---------------------------------------------------------------- the portal and operators

def test_portal_queries_are_paged_and_limited_to_the_callers_vo(cloud: Cloud):
    started = int(time.time()) - 1
    ours = [cloud.instance("pod1") for _ in range(5)]
    theirs = [cloud.instance("pod2") for _ in range(2)]
    for instance_id in ours[:3]:
        cloud.vm(cloud.credential(instance_id)).instanceHeartBeat(0.5, 1, 0, 0, 60.0)
    alice = cloud.user("alice-proxy")
    page = alice.getInstances({}, [["InstanceID", "ASC"]], 0, 2)
    assert page["TotalRecords"] == 5 and page["Extras"] == {"Running": 3, "Submitted": 2}
    names = page["ParameterNames"]
    assert [r[names.index("InstanceID")] for r in page["Records"]] == ours[:2]
    assert {"Image", "Endpoint", "Status", "EndpointVMID", "PublicIP", "Load", "Uptime", "Jobs", "LastUpdate",
            "ErrorMessage"} <= set(names)
    last = alice.getInstances({"Status": ["Running"]}, [["InstanceID", "DESC"]], 2, 2)
    assert [r[0] for r in last["Records"]] == [ours[0]] and last["TotalRecords"] == 3
    assert alice.getInstances({"VO": "othervo"}, None, 0, 10)["TotalRecords"] == 0   # cannot widen
    assert bob(cloud, "other_user").getInstances({}, None, 0, 10)["TotalRecords"] == 2
    assert alice.getInstanceCounters("Status") == {"Running": 3, "Submitted": 2}
    assert cloud.user().getInstanceCounters(["Pod", "Status"], {}) == {"pod1": {"Running": 3, "Submitted": 2}}
    with pytest.raises(NotAuthorized, match=f"instance {theirs[0]} does not exist or is not of your VO"):
        alice.getInstanceHistory(theirs[0])
    # A bucket width (about an hour) whose boundary no row of this test straddles, whatever the
    # time of day: with a fixed 3600 s, a run at hh:59:59 splits the rows over two buckets.
    ended = int(time.time()) + 2
    width = next(w for w in range(3600, 3000, -7) if started // w == ended // w)
    plot = alice.getHistoryForPlot(width, 2.0, "Pod")
    assert [(p["Group"], p["Instances"], p["Load"], p["Jobs"]) for p in plot][-1] == ("pod1", 3, 0.5, 3.0)
    with pytest.raises(InvalidArgument):
        alice.getInstances({"Color": "red"}, None, 0, 10)
    with pytest.raises(InvalidArgument):
        alice.getHistoryForPlot(1, 100.0)


def test_only_operators_stop_and_only_the_vms_of_their_vo(cloud: Cloud):
    fresh, running = cloud.instance(status="New"), cloud.instance()
    foreign = cloud.instance("pod2")
    with pytest.raises(NotAuthorized, match="needs one of Operator"):
        cloud.user("alice-proxy").stopInstance([running])
    result = cloud.user().stopInstance([fresh, running, foreign, 999999])
    assert result["Successful"] == [fresh, running]
    assert result["Statuses"] == {str(fresh): "Halted", str(running): "Stopping"}
    assert set(result["Failed"]) == {str(foreign), "999999"}
    assert "does not exist or is not of your VO" in result["Failed"][str(foreign)]
    assert bob(cloud, "other_admin").stopInstance(foreign, True)["Statuses"] == {str(foreign): "Stopping"}
    assert cloud.db.get(foreign).pending_command == "halt"
    with pytest.raises(InvalidArgument):
        cloud.user().stopInstance([])
