"""Accounting/DataStore over HTTPS, fed by the real paths that end jobs and VMs: a pilot's final
report, a user's kill, the StalledJobAgent, a VM halting through the VirtualMachineManager."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import update

from tests.services.test_virtual_machine_manager import TREE as VMM_TREE, Cloud
from tests.services.wms_fixtures import WMS_SERVICES, jdl
from vmdirac.agents.stalled_job_agent import StalledJobAgent
from vmdirac.core.client import ClientCredentials, RPCClient
from vmdirac.core.config import deep_merge
from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import BadRequest, InvalidArgument, NotAuthorized, UnknownMethod
from vmdirac.db.accounting_db import AccountingDB
from vmdirac.db.job_db import JobDB
from vmdirac.db.virtual_machine_db import instances

DS = "Accounting/DataStore"
VMM = "WorkloadManagement/VirtualMachineManager"
HOUR = dt.timedelta(hours=1)
TREE = deep_merge(VMM_TREE, {"Systems": {"Accounting": {"Services": {"DataStore": {}}}}})
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cloud(start_server, db_url, tmp_path, pki):
    from pathlib import Path

    from vmdirac.core import x509 as X

    server = start_server(db_url, WMS_SERVICES + [VMM, DS], TREE)
    cert = X.load_certificates(Path(pki.path("bobcert.pem")).read_bytes())
    key = X.load_key(Path(pki.path("bobkey.pem")).read_bytes())
    _p, pkey, chain = X.make_proxy(cert, key, 1, group="other_user")
    X.write_private(tmp_path / "bob-other_user", X.proxy_pem(chain, pkey))
    return Cloud(server, tmp_path)


def ds(cloud: Cloud, proxy: str = "alice-proxy") -> RPCClient:
    return cloud.server.client(DS, proxy)


def bob_other_vo(cloud: Cloud) -> RPCClient:
    creds = ClientCredentials(str(cloud.tmp / "bob-other_user"), None, str(cloud.server.pki.ca_dir))
    return RPCClient(DS, creds, urls=[cloud.server.url(DS)])


def window() -> tuple[dt.datetime, dt.datetime]:
    now = utcnow()
    return now - 2 * HOUR, now + HOUR


def records(cloud: Cloud) -> AccountingDB:
    return AccountingDB(cloud.server.context.engine)


# ---------------------------------------------------------------- the contract

def test_list_reports_names_types_units_and_groupings(cloud: Cloud):
    reports = {r["name"]: r for r in ds(cloud).listReports()}
    assert list(reports) == ["jobs", "cpu", "wall", "running_vms", "vm_cost", "vm_jobs"]
    assert reports["jobs"] == {"name": "jobs", "title": "Jobs", "type": "Job", "unit": "jobs",
                               "groupings": ["Site", "Endpoint", "VO", "User", "Status"]}
    assert reports["running_vms"]["type"] == "VM"
    assert reports["vm_cost"]["groupings"] == ["Endpoint", "Site", "VO", "Pod", "Image"]


@pytest.mark.parametrize("args, message", [
    (("nope", "Site"), "unknown report 'nope'"),
    (("jobs", "Pod"), "report jobs cannot be grouped by 'Pod'"),
    (("jobs", "Site", "week"), "unknown bucket 'week'"),
    (("jobs", "Site", "auto", {"Color": ["red"]}), "cannot be selected by 'Color'"),
])
def test_bad_requests_get_one_line_reasons(cloud: Cloud, args, message):
    start, end = window()
    name, grouping, *rest = args
    with pytest.raises(InvalidArgument, match=message) as err:
        ds(cloud).getReport(name, grouping, start, end, *rest)
    assert "\n" not in str(err.value)


def test_time_spans_are_checked(cloud: Cloud):
    start, end = window()
    with pytest.raises(InvalidArgument, match="is not after startTime"):
        ds(cloud).getReport("jobs", "Site", end, start)
    with pytest.raises(InvalidArgument, match="at most a year"):
        ds(cloud).getReport("jobs", "Site", end - dt.timedelta(days=400), end)
    with pytest.raises(BadRequest, match="expected datetime"):
        ds(cloud).getReport("jobs", "Site", "yesterday", end)


def test_records_cannot_be_written_over_rpc_and_pilots_see_nothing(cloud: Cloud):
    with pytest.raises(UnknownMethod):
        ds(cloud, "admin-proxy").call("commit", "Job", [])
    start, end = window()
    pilot = cloud.server.client(DS, "workercert.pem", "workerkey.pem", use_host=True)
    with pytest.raises(NotAuthorized):
        pilot.getReport("jobs", "Site", start, end)
    vm = cloud.vm(cloud.credential(cloud.instance()), service=DS)
    with pytest.raises(NotAuthorized):
        vm.listReports()


# ---------------------------------------------------------------- records from the real paths

def _run(cloud: Cloud, final: str, site: str = "LCG.Test.ch") -> int:
    server = cloud.server
    job_id = server.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(jdl())
    pilot = server.client("WorkloadManagement/Matcher", "workercert.pem", "workerkey.pem", use_host=True)
    update_ = server.client("WorkloadManagement/JobStateUpdate", "workercert.pem", "workerkey.pem", use_host=True)
    assert pilot.requestJob({"Site": site, "Endpoint": "Site1/cloud1", "InstanceID": "42"})["JobID"] == job_id
    update_.setJobStatus(job_id, "Running", "Application", "JobWrapper")
    update_.setJobParameters(job_id, [["CPUConsumed", "12.5"], ["WallClockTime", "20.0"]])
    update_.setJobStatus(job_id, final, "Execution Complete", "JobWrapper")
    return job_id


def test_a_job_run_to_done_is_accounted_once_with_site_owner_and_status(cloud: Cloud):
    job_id = _run(cloud, "Done")
    rec = records(cloud).job_record(job_id)
    assert (rec["Site"], rec["Owner"], rec["OwnerGroup"], rec["VO"], rec["Status"], rec["Endpoint"],
            rec["InstanceID"], rec["CPUTime"], rec["WallTime"]) == (
        "LCG.Test.ch", "alice", "dirac_user", "vmdirac", "Done", "Site1/cloud1", 42, 12.5, 20.0)
    assert records(cloud).count("Job") == 1
    start, end = window()
    report = ds(cloud).getReport("jobs", "Site", start, end, "hour")
    assert report["bucket_seconds"] == 3600 and len(report["times"]) in (3, 4)
    assert list(report["series"]) == ["LCG.Test.ch"] and sum(report["series"]["LCG.Test.ch"]) == 1
    cpu = ds(cloud).getReport("cpu", "User", start, end)
    assert sum(cpu["series"]["alice"]) == pytest.approx(12.5 / 3600, abs=1e-6)


def test_killed_jobs_are_recorded_killed_whoever_kills_them(cloud: Cloud):
    server = cloud.server
    manager = server.client("WorkloadManagement/JobManager", "alice-proxy")
    waiting = manager.submitJob(jdl())
    assert manager.killJob(waiting)["Successful"] == [waiting]          # killed at once
    running = _run(cloud, "Killed")                                     # the pilot reports it killed
    acc = records(cloud)
    assert acc.job_record(waiting)["Status"] == "Killed"
    assert acc.job_record(running)["Status"] == "Killed"
    start, end = window()
    assert ds(cloud).getReport("jobs", "Status", start, end)["series"].keys() == {"Killed"}


def test_the_stalled_job_agent_failing_a_job_records_it_failed(cloud: Cloud):
    server = cloud.server
    job_id = server.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(jdl())
    server.client("WorkloadManagement/Matcher", "workercert.pem", "workerkey.pem", use_host=True).requestJob({})
    server.client("WorkloadManagement/JobStateUpdate", "workercert.pem", "workerkey.pem",
                  use_host=True).setJobStatus(job_id, "Running", "Application", "JobWrapper")
    agent = StalledJobAgent(server.context)
    agent.initialize()
    db = JobDB(server.context.engine)
    db.set_attributes(job_id, {"HeartBeatTime": utcnow() - 3 * HOUR, "LastUpdateTime": utcnow() - 3 * HOUR})
    agent.execute()
    assert records(cloud).job_record(job_id) is None                    # Stalled is not the end
    db.set_attributes(job_id, {"LastUpdateTime": utcnow() - 7 * HOUR})
    agent.execute()
    assert records(cloud).job_record(job_id)["Status"] == "Failed"


def test_a_halted_vm_produces_one_record_with_its_cost(cloud: Cloud):
    iid, _ = cloud.db.new_instance("pod1", "el9", "Site1/cloud1", "Site1", vo="vmdirac", cost_per_hour=2.0)
    cloud.db.set_submitted(iid, f"vm-{iid}")
    vm = cloud.vm(cloud.credential(iid))
    vm.declareInstanceRunning("10.0.0.5")
    vm.instanceHeartBeat(0.8, 1, 0, 0, 60.0)
    with cloud.server.context.engine.begin() as conn:   # booted an hour ago
        conn.execute(update(instances).where(instances.c.InstanceID == iid).values(Submitted=utcnow() - HOUR))
    assert vm.declareInstanceHalting()["Status"] == "Halted"
    rec = records(cloud).vm_record(iid)
    assert (rec["Pod"], rec["VO"], rec["Endpoint"]) == ("pod1", "vmdirac", "Site1/cloud1")
    assert rec["Cost"] == pytest.approx(2.0 * rec["WallTime"] / 3600) and 2.0 <= rec["Cost"] < 2.1
    assert records(cloud).count("VM") == 1
    start, end = window()
    cost = ds(cloud).getReport("vm_cost", "VO", start, end, "hour")
    assert sum(cost["series"]["vmdirac"]) == pytest.approx(rec["Cost"])
    running = ds(cloud).getReport("running_vms", "Endpoint", start, end, "hour")
    # Up for the last hour: about one VM-hour spread over the buckets it covers.
    assert sum(running["series"]["Site1/cloud1"]) == pytest.approx(1.0, abs=0.02)
    png = ds(cloud).getPlot("running_vms", "Endpoint", start, end)
    assert png.startswith(PNG) and len(png) > 5000


# ---------------------------------------------------------------- who sees what

def test_each_vo_sees_its_own_accounting_only(cloud: Cloud):
    end = utcnow()
    row = {"Owner": "x", "OwnerGroup": "g", "Site": "S", "Endpoint": "E", "InstanceID": 0, "Status": "Done",
           "CPUTime": 0.0, "WallTime": 0.0, "Cores": 1, "BytesIn": 0, "BytesOut": 0, "StartTime": None,
           "EndTime": end}
    records(cloud).add_records([{**row, "JobID": 1, "VO": "vmdirac"}, {**row, "JobID": 2, "VO": "othervo"},
                                {**row, "JobID": 3, "VO": "othervo"}])
    start, stop = end - HOUR, end + HOUR
    mine = ds(cloud).getReport("jobs", "VO", start, stop)["series"]
    assert {vo: sum(v) for vo, v in mine.items()} == {"vmdirac": 1}
    theirs = bob_other_vo(cloud).getReport("jobs", "VO", start, stop)["series"]
    assert {vo: sum(v) for vo, v in theirs.items()} == {"othervo": 2}
    with pytest.raises(NotAuthorized, match="sees the accounting of VO othervo only"):
        bob_other_vo(cloud).getReport("jobs", "Site", start, stop, "auto", {"VO": ["vmdirac"]})
    # An operator of a VO is a person too: its own VO only.
    admin = ds(cloud, "admin-proxy").getReport("jobs", "VO", start, stop)["series"]
    assert set(admin) == {"vmdirac"}


def test_the_portal_delegating_a_user_sees_that_users_vo(cloud: Cloud):
    end = utcnow()
    records(cloud).add_records([{"JobID": 9, "Owner": "x", "OwnerGroup": "g", "VO": "othervo", "Site": "S",
                                 "Endpoint": "E", "InstanceID": 0, "Status": "Done", "CPUTime": 0.0,
                                 "WallTime": 0.0, "Cores": 1, "BytesIn": 0, "BytesOut": 0, "StartTime": None,
                                 "EndTime": end}])
    from tests.pki import ALICE, BOB

    portal = cloud.server.client(DS, "hostcert.pem", "hostkey.pem", delegate=(BOB, "other_user"))
    assert set(portal.getReport("jobs", "VO", end - HOUR, end + HOUR)["series"]) == {"othervo"}
    portal = cloud.server.client(DS, "hostcert.pem", "hostkey.pem", delegate=(ALICE, "dirac_user"))
    assert portal.getReport("jobs", "VO", end - HOUR, end + HOUR)["series"] == {}
