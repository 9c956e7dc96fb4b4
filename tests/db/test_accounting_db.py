"""AccountingDB on both backends: the records the job and VM DBs write when a job or a VM ends
(in the same transaction, once per id), and the SQL grouping of reports."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, update

from vmdirac.core.db import make_engine, utcnow
from vmdirac.db.accounting_db import AccountingDB, Selection, job_records, vm_records
from vmdirac.db.job_db import JobDB, NewJob
from vmdirac.db.sandbox_metadata_db import SandboxMetadataDB
from vmdirac.db.virtual_machine_db import VirtualMachineDB, instances

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    JobDB(engine).create_tables()
    VirtualMachineDB(engine).create_tables()
    SandboxMetadataDB(engine).create_tables()
    yield engine
    engine.dispose()


def new_job(jobdb: JobDB, job_id: int, owner: str = "alice", vo: str = "vo1", status: str = "Waiting") -> int:
    now = utcnow()
    jobdb.insert_jobs([NewJob(job_id, {"Owner": owner, "OwnerDN": f"/CN={owner}", "OwnerGroup": f"{vo}_user",
                                       "VO": vo, "Status": status, "MinorStatus": "", "SubmissionTime": now,
                                       "LastUpdateTime": now, "NumberOfProcessors": 2}, "[]", "[]")], [])
    return job_id


def run_to(jobdb: JobDB, job_id: int, final: str, site: str = "Site1") -> None:
    jobdb.set_status(job_id, "Matched", "Assigned", attributes={"Site": site})
    start = utcnow() - HOUR
    jobdb.set_status(job_id, "Running", "Application", attributes={"StartExecTime": start})
    jobdb.set_parameters(job_id, {"CPUConsumed": "1800.5", "WallClockTime": "3600.0", "Endpoint": "Site1/cloud1",
                                  "InstanceID": "7"})
    jobdb.set_status(job_id, final, "Execution Complete", attributes={"EndExecTime": utcnow()})


def test_a_job_that_ends_gets_one_record_with_its_figures(engine):
    jobdb, acc = JobDB(engine), AccountingDB(engine)
    job_id = new_job(jobdb, 1)
    sbdb = SandboxMetadataDB(engine)
    for kind, size in (("Input", 1000), ("Output", 250)):
        sb = sbdb.register("alice", "vo1_user", "vo1", "ProductionSandboxSE", f"/{kind}.tar", size, "0" * 64)
        sbdb.assign_to_job([sb.sb_id], job_id, kind, "alice", "vo1_user")
    run_to(jobdb, job_id, "Done")
    rec = acc.job_record(job_id)
    assert {k: rec[k] for k in ("Owner", "OwnerGroup", "VO", "Site", "Endpoint", "InstanceID", "Status", "CPUTime",
                                "WallTime", "Cores", "BytesIn", "BytesOut")} == {
        "Owner": "alice", "OwnerGroup": "vo1_user", "VO": "vo1", "Site": "Site1", "Endpoint": "Site1/cloud1",
        "InstanceID": 7, "Status": "Done", "CPUTime": 1800.5, "WallTime": 3600.0, "Cores": 2, "BytesIn": 1000,
        "BytesOut": 250}
    assert rec["EndTime"] - rec["StartTime"] >= HOUR
    assert acc.count("Job") == 1


def test_no_record_before_the_end_nor_a_second_one_after(engine):
    jobdb, acc = JobDB(engine), AccountingDB(engine)
    job_id = new_job(jobdb, 2)
    jobdb.set_status(job_id, "Matched", "Assigned")
    jobdb.set_status(job_id, "Running", "Application")
    assert acc.job_record(job_id) is None                  # running: nothing yet
    jobdb.set_status(job_id, "Failed", "Application Finished With Errors")
    jobdb.set_status(job_id, None, "a later minor status")  # same status: not recorded again
    acc.record_job(job_id)                                 # a retried write replaces, never adds
    assert acc.count("Job") == 1
    # Rescheduled and run again: still one record, now of its last end.
    for status in ("Rescheduled", "Waiting", "Matched", "Running", "Done"):
        jobdb.set_status(job_id, status, "")
    assert acc.count("Job") == 1
    assert acc.job_record(job_id)["Status"] == "Done"


def test_a_job_killed_while_waiting_is_recorded_killed_without_a_start(engine):
    jobdb, acc = JobDB(engine), AccountingDB(engine)
    job_id = new_job(jobdb, 3)
    jobdb.set_status(job_id, "Killed", "Killed by user", attributes={"EndExecTime": utcnow()})
    rec = acc.job_record(job_id)
    assert (rec["Status"], rec["StartTime"], rec["WallTime"], rec["Site"]) == ("Killed", None, 0.0, "ANY")


def test_a_status_change_that_fails_leaves_no_record(engine):
    """Same transaction: an illegal transition rolls the whole change back, record included."""
    from vmdirac.core.exceptions import IllegalTransition

    jobdb, acc = JobDB(engine), AccountingDB(engine)
    job_id = new_job(jobdb, 4)
    with pytest.raises(IllegalTransition):
        jobdb.set_status(job_id, "Done", "")               # Waiting -> Done is not allowed
    assert acc.job_record(job_id) is None


def test_a_halted_vm_gets_one_record_with_wall_time_cost_load_and_jobs(engine):
    vmdb, jobdb, acc = VirtualMachineDB(engine), JobDB(engine), AccountingDB(engine)
    iid, _ = vmdb.new_instance("pod1", "el9", "Site1/cloud1", "Site1", vo="vo1", cost_per_hour=0.5)
    vmdb.set_submitted(iid, "vm-1")
    vmdb.declare_running(iid)
    vmdb.heartbeat(iid, 0.5, 1, 0, 0, 60)
    vmdb.heartbeat(iid, 1.5, 1, 0, 0, 120)
    for n in (10, 11):
        new_job(jobdb, n)
        jobdb.set_parameters(n, {"InstanceID": str(iid)})
        jobdb.set_status(n, "Killed", "Killed by user")
    two_hours_ago = utcnow() - 2 * HOUR
    with engine.begin() as conn:   # as if booted two hours ago
        conn.execute(update(instances).where(instances.c.InstanceID == iid).values(Submitted=two_hours_ago))
    vmdb.request_stop(iid, force=True)
    assert acc.vm_record(iid) is None                      # Stopping is not the end
    vmdb.set_status(iid, "Halted", "declared halting by the VM")
    rec = acc.vm_record(iid)
    assert (rec["Pod"], rec["Image"], rec["Endpoint"], rec["Site"], rec["VO"], rec["JobsRun"]) == (
        "pod1", "el9", "Site1/cloud1", "Site1", "vo1", 2)
    assert 2 * 3600 <= rec["WallTime"] < 2 * 3600 + 60
    assert rec["Cost"] == pytest.approx(rec["WallTime"] / 3600 * 0.5)
    assert 0.5 < rec["MeanLoad"] < 1.5
    vmdb.set_status(iid, "Halted", "again")                # a no-op: no second record
    assert acc.count("VM") == 1


def test_a_vm_never_booted_costs_nothing(engine):
    vmdb, acc = VirtualMachineDB(engine), AccountingDB(engine)
    iid, _ = vmdb.new_instance("pod1", "el9", "Site1/cloud1", "Site1", vo="vo1", cost_per_hour=3.0)
    vmdb.request_stop(iid)                                 # New -> Halted
    rec = acc.vm_record(iid)
    assert (rec["Cost"], rec["JobsRun"]) == (0.0, 0)


def _job_row(job_id: int, end: dt.datetime, **kw) -> dict:
    row = {"JobID": job_id, "Owner": "alice", "OwnerGroup": "g", "VO": "vo1", "Site": "S1", "Endpoint": "E1",
           "InstanceID": 0, "Status": "Done", "CPUTime": 3600.0, "WallTime": 7200.0, "Cores": 1, "BytesIn": 0,
           "BytesOut": 0, "StartTime": end - HOUR, "EndTime": end}
    row.update(kw)
    return row


def test_sql_groups_records_by_bucket_and_attribute(engine):
    acc = AccountingDB(engine)
    day = dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc)
    acc.add_records([
        _job_row(1, day + dt.timedelta(minutes=10)),
        _job_row(2, day + dt.timedelta(minutes=50), Site="S2"),
        _job_row(3, day + dt.timedelta(hours=1, minutes=5)),
        _job_row(4, day + dt.timedelta(hours=1, minutes=6), VO="vo2"),
        _job_row(5, day - dt.timedelta(minutes=1)),         # before the window
    ])
    sel = Selection(day, day + 3 * HOUR, 3600, {"VO": ("vo1",)})
    t0 = int(day.timestamp())
    assert acc.grouped("jobs", "Site", sel) == [(t0, "S1", 1.0), (t0, "S2", 1.0), (t0 + 3600, "S1", 1.0)]
    assert acc.grouped("cpu", "VO", sel) == [(t0, "vo1", 2.0), (t0 + 3600, "vo1", 1.0)]
    daily = Selection(day - dt.timedelta(days=1), day + dt.timedelta(days=1), 86400, {})
    assert acc.grouped("wall", "User", daily) == [(t0 - 86400, "alice", 2.0), (t0, "alice", 8.0)]
    acc.add_records([_job_row(1, day + dt.timedelta(minutes=10), Status="Failed")])   # replaces job 1
    assert acc.grouped("jobs", "Status", sel) == [(t0, "Done", 1.0), (t0, "Failed", 1.0), (t0 + 3600, "Done", 1.0)]


def test_vm_intervals_include_ended_and_running_vms(engine):
    vmdb, acc = VirtualMachineDB(engine), AccountingDB(engine)
    now = utcnow()
    acc.add_records(vm_rows=[{"InstanceID": 100, "Pod": "p", "Image": "i", "Endpoint": "E1", "Site": "S1", "VO": "vo1",
                              "StartTime": now - 3 * HOUR, "EndTime": now - HOUR, "WallTime": 7200.0, "JobsRun": 3,
                              "MeanLoad": 1.0, "CostPerHour": 1.0, "Cost": 2.0}])
    iid, _ = vmdb.new_instance("p", "i", "E2", "S1", vo="vo1")
    vmdb.set_submitted(iid, "vm-x")
    sel = Selection(now - 4 * HOUR, now + HOUR, 3600, {"VO": ("vo1",)})
    got = sorted(acc.vm_intervals("Endpoint", sel))
    assert [g for g, _s, _e in got] == ["E1", "E2"]
    assert acc.grouped("vm_cost", "Pod", sel)[0][1:] == ("p", 2.0)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(job_records)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(vm_records)).scalar_one() == 1
