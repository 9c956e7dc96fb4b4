"""Submitting, following and acting on jobs over HTTPS, as users, pilots and administrators."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.services.wms_fixtures import WMS, jdl, wms  # noqa: F401  (fixture)
from vmdirac.core.exceptions import IllegalTransition, InvalidJDL, NotAuthorized, QuotaExceeded

ACCEPTED = [("Received", "Job accepted", "JobManager"), ("Checking", "JobSanity", "JobSanity"),
            ("Checking", "JobScheduling", "JobScheduling"),
            ("Waiting", "Pilot Agent Submission", "JobScheduling")]


def test_submit_puts_the_job_in_a_task_queue_with_its_logging(wms: WMS):
    job_id = wms.submit(jdl(CPUTime=3600))
    assert isinstance(job_id, int)
    assert wms.status(job_id, "alice-proxy") == ("Waiting", "Pilot Agent Submission")
    assert wms.logging(job_id, "alice-proxy") == ACCEPTED
    attrs = wms.user("JobMonitoring").getJobAttributes(job_id)
    assert (attrs["Owner"], attrs["OwnerGroup"], attrs["VO"], attrs["Site"]) == ("alice", "dirac_user", "vmdirac", "ANY")
    queues = wms.user("Matcher", "admin-proxy").getActiveTaskQueues()
    assert [q["Jobs"] for q in queues.values()] == [1] and list(queues.values())[0]["CPUTime"] == 3600
    text = wms.user("JobMonitoring").getJobJDL(job_id)
    assert f"JobID = {job_id}" in text and 'Owner = "alice"' in text


def test_parametric_job_makes_one_job_per_parameter(wms: WMS):
    ids = wms.submit(jdl(Arguments="value %s index %n job %j", Parameters=["x", "y", "z"]))
    assert isinstance(ids, list) and len(ids) == 3 and ids == sorted(ids)
    texts = [wms.user("JobMonitoring").getJobJDL(i) for i in ids]
    for i, (job_id, value) in enumerate(zip(ids, "xyz")):
        assert f'"value {value} index {i} job {job_id}"' in texts[i]


def test_over_the_parametric_cap_stores_nothing(wms: WMS):
    with pytest.raises(QuotaExceeded, match="over the cap of 50"):
        wms.submit(jdl(Parameters=100))
    assert wms.user("JobMonitoring").getJobs() == []


@pytest.mark.parametrize("text,message", [
    ('[ Executable = "/bin/true"; Arguments = "unterminated ]', "line 1"),
    ('[ JobName = "x"; ]', "Executable"),
    ('[ Executable = "x"; CPUTime = "abc"; ]', "CPUTime"),
    ('[ Executable = "x"; InputSandbox = {"local.txt"}; ]', "local.txt was not uploaded"),
    ('[ Executable = "x"; Site = "A"; BannedSites = "A"; ]', "could run nowhere"),
    ('[ Executable = "x"; InputSandbox = {"SB:ProductionSandboxSE|/nope.tar"}; ]', "nope"),
])
def test_bad_jobs_are_refused_with_a_reason_and_store_nothing(wms: WMS, text, message):
    with pytest.raises(Exception, match=message) as err:
        wms.submit(text)
    assert err.value.errno != 0
    assert wms.user("JobMonitoring").getJobs() == []


def test_bulk_submission_is_all_or_nothing(wms: WMS):
    with pytest.raises(InvalidJDL, match="job 2: "):
        wms.user("JobManager").submitJobs([jdl(), '[ Executable = "x"; CPUTime = -5; ]'])
    assert wms.user("JobMonitoring").getJobs() == []
    ids = wms.user("JobManager").submitJobs([jdl(), jdl(JobName="second")])
    assert len(ids) == 2 and wms.user("JobMonitoring").getJobs() == ids


def test_users_see_and_touch_only_their_own_jobs(wms: WMS):
    mine = wms.submit(jdl())
    bobs = wms.submit(jdl(), "bob-proxy")
    assert set(wms.states([mine, bobs], "alice-proxy")) == {str(mine)}
    with pytest.raises(NotAuthorized, match=f"job {bobs} does not exist or is not yours"):
        wms.user("JobMonitoring").getJobLoggingInfo(bobs)
    with pytest.raises(NotAuthorized):
        wms.user("JobMonitoring").getJobJDL(bobs)
    result = wms.user("JobManager").killJob([mine, bobs])
    assert result["Successful"] == [mine] and str(bobs) in result["Failed"]
    assert wms.status(bobs) == ("Waiting", "Pilot Agent Submission")
    assert wms.user("JobMonitoring").getJobs() == [mine]
    # The administrator of the VO sees and acts on both.
    assert set(wms.states([mine, bobs], "admin-proxy")) == {str(mine), str(bobs)}
    assert wms.user("JobManager", "admin-proxy").deleteJob([bobs])["Successful"] == [bobs]
    page = wms.user("JobMonitoring", "bob-proxy").getJobPageSummaryWeb({}, [["JobID", "ASC"]], 0, 10)
    assert page["TotalRecords"] == 1 and page["Records"][0][page["ParameterNames"].index("Status")] == "Deleted"


def test_a_pilot_matches_each_job_once_and_reports_its_life(wms: WMS):
    job_id = wms.submit(jdl())
    pilot = wms.pilot()
    match = pilot.requestJob({"Site": "LCG.Test.ch", "Endpoint": "local", "Image": "el9", "InstanceID": "vm-1"})
    assert match["JobID"] == job_id and match["Owner"] == "alice" and "Executable" in match["JDL"]
    assert pilot.requestJob({"Site": "LCG.Test.ch"}) is None        # no match is not an error
    assert wms.status(job_id) == ("Matched", "Assigned")
    assert wms.logging(job_id)[-1] == ("Matched", "Assigned", "Matcher")
    assert wms.user("JobMonitoring").getJobsSites([job_id]) == {str(job_id): {"Site": "LCG.Test.ch"}}
    params = wms.user("JobMonitoring").getJobParameters(job_id)[str(job_id)]
    assert params == {"Endpoint": "local", "Image": "el9", "InstanceID": "vm-1"}

    update = wms.pilot("JobStateUpdate")
    update.setJobStatus(job_id, "Running", "Downloading Inputs", "JobWrapper")
    update.setJobStatus(job_id, "", "Application", "JobWrapper")
    update.setJobApplicationStatus(job_id, "Gauss v36r1 Success", "Gauss")
    with pytest.raises(IllegalTransition, match=f"job {job_id}: Running -> Waiting is not allowed"):
        update.setJobStatus(job_id, "Waiting", "", "JobWrapper")
    with pytest.raises(NotAuthorized, match="not run by this pilot"):
        wms.user("JobStateUpdate", "bob-proxy").setJobStatus(job_id, "Done", "", "bob")
    assert update.sendHeartBeat(job_id, {"CPUConsumed": 1.5, "MemoryUsed": 1000}, {}) == {}
    update.setJobParameters(job_id, [["ExitCode", "0"]])
    update.setJobStatus(job_id, "Done", "Execution Complete", "JobWrapper")
    log = wms.logging(job_id)
    assert log[4:] == [("Matched", "Assigned", "Matcher"), ("Running", "Downloading Inputs", "JobWrapper"),
                       ("Running", "Application", "JobWrapper"), ("Running", "Application", "Gauss"),
                       ("Done", "Execution Complete", "JobWrapper")]
    info = wms.user("JobMonitoring").getJobLoggingInfo(job_id)
    assert info[7][2] == "Gauss v36r1 Success" and isinstance(info[7][3], dt.datetime)
    params = wms.user("JobMonitoring").getJobParameters(job_id)[str(job_id)]
    assert params["CPUConsumed"] == "1.5" and params["ExitCode"] == "0"
    attrs = wms.user("JobMonitoring").getJobAttributes(job_id)
    assert attrs["StartExecTime"] <= attrs["EndExecTime"] and attrs["HeartBeatTime"] is not None


def test_kill_of_a_running_job_goes_through_the_heartbeat(wms: WMS):
    job_id = wms.submit(jdl())
    wms.pilot().requestJob({})
    update = wms.pilot("JobStateUpdate")
    update.setJobStatus(job_id, "Running", "Application", "JobWrapper")
    assert wms.user("JobManager").killJob(job_id)["Successful"] == [job_id]
    assert wms.status(job_id) == ("Running", "Marked for termination")
    assert update.sendHeartBeat(job_id, {}, {}) == {"Kill": ""}
    assert update.sendHeartBeat(job_id, {}, {}) == {}              # sent once
    update.setJobStatus(job_id, "Killed", "Killed by user", "JobWrapper")
    assert wms.status(job_id) == ("Killed", "Killed by user")
    result = wms.user("JobManager").killJob(job_id)
    assert result["Failed"] == {str(job_id): f"job {job_id} is Killed: nothing to kill"}


def test_killing_a_waiting_job_takes_it_out_of_its_queue(wms: WMS):
    job_id = wms.submit(jdl())
    wms.user("JobManager").killJob(job_id)
    assert wms.status(job_id) == ("Killed", "Killed by user")
    assert wms.pilot().requestJob({}) is None


def test_requirements_decide_who_gets_a_job(wms: WMS):
    cern = wms.submit(jdl(Site="LCG.CERN.ch"))
    gpu = wms.submit(jdl(Tags=["GPU"]))
    multi = wms.submit(jdl(NumberOfProcessors=4))
    pilot = wms.pilot()
    assert pilot.requestJob({"Site": "LCG.IN2P3.fr", "NumberOfProcessors": 2}) is None
    assert pilot.requestJob({"Site": "LCG.IN2P3.fr", "Tag": ["GPU"]})["JobID"] == gpu
    assert pilot.requestJob({"Site": "LCG.IN2P3.fr", "NumberOfProcessors": 8})["JobID"] == multi
    queues = pilot.getMatchingTaskQueues({"Site": "LCG.CERN.ch"})
    assert [q["Sites"] for q in queues.values()] == [["LCG.CERN.ch"]]
    assert pilot.requestJob({"Site": "LCG.CERN.ch"})["JobID"] == cern


def test_a_user_pilot_takes_only_that_users_jobs(wms: WMS):
    bobs = wms.submit(jdl(), "bob-proxy")
    mine = wms.submit(jdl())
    assert wms.user("Matcher").requestJob({})["JobID"] == mine
    assert wms.user("Matcher").requestJob({}) is None
    assert wms.status(bobs) == ("Waiting", "Pilot Agent Submission")


def test_reschedule_counts_and_stops_at_the_maximum(wms: WMS):
    job_id = wms.submit(jdl())
    update = wms.pilot("JobStateUpdate")
    for n in range(1, 4):
        assert wms.pilot().requestJob({})["JobID"] == job_id
        update.setJobStatus(job_id, "Running", "Application", "JobWrapper")
        update.setJobStatus(job_id, "Failed", "Application Finished With Errors", "JobWrapper")
        assert wms.user("JobManager").rescheduleJob(job_id)["Successful"] == [job_id]
        assert wms.status(job_id) == ("Waiting", "Pilot Agent Submission")
        assert wms.user("JobMonitoring").getJobAttribute(job_id, "RescheduleCounter") == n
    wms.pilot().requestJob({})
    update.setJobStatus(job_id, "Running", "", "JobWrapper")
    update.setJobStatus(job_id, "Failed", "", "JobWrapper")
    result = wms.user("JobManager").rescheduleJob(job_id)
    assert "rescheduled 3 times already" in result["Failed"][str(job_id)]
    statuses = [s for s, _, _ in wms.logging(job_id)]
    assert statuses.count("Rescheduled") == 3


def test_job_lists_for_the_portal(wms: WMS):
    ids = [wms.submit(jdl(JobGroup="g1" if i % 2 else "g2", Site="LCG.CERN.ch")) for i in range(5)]
    wms.submit(jdl(), "bob-proxy")
    mon = wms.user("JobMonitoring")
    page = mon.getJobPageSummaryWeb({"JobGroup": "g1"}, [["JobID", "ASC"]], 0, 1)
    assert page["TotalRecords"] == 2 and len(page["Records"]) == 1
    assert page["Records"][0][0] == ids[1] and page["Extras"] == {"Waiting": 2}
    page2 = mon.getJobPageSummaryWeb({"JobGroup": "g1"}, [["JobID", "ASC"]], 1, 1)
    assert page2["Records"][0][0] == ids[3]
    assert mon.getJobGroups() == ["g1", "g2"] and mon.getSites() == ["LCG.CERN.ch"]
    assert mon.getOwners() == ["alice"]
    assert mon.getJobStats("Status", {}) == {"Waiting": 5}
    assert mon.getJobs({"Status": "Waiting", "JobGroup": ["g2"]}) == [ids[0], ids[2], ids[4]]
    assert mon.getJobs({"Owner": "bob"}) == []    # a user cannot widen the selection to others
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    assert len(mon.getJobs({"FromDate": today})) == 5
    with pytest.raises(Exception, match="cannot select jobs by Color"):
        mon.getJobs({"Color": "red"})
    with pytest.raises(Exception, match="not a date"):
        mon.getJobs({"FromDate": "yesterday"})
    admin = wms.user("JobMonitoring", "admin-proxy")
    assert admin.getOwners() == ["alice", "bob"]


def test_long_poll_answers_when_a_job_arrives(wms: WMS):
    import threading
    import time

    got = {}
    pilot = wms.pilot()
    t = threading.Thread(target=lambda: got.setdefault("match", pilot.requestJob({}, 20)))
    started = time.monotonic()
    t.start()
    job_id = None
    # Submit once the pilot is (very likely) waiting; correctness does not depend on it.
    t.join(0.3)
    job_id = wms.submit(jdl())
    t.join(15)
    assert got["match"]["JobID"] == job_id
    assert time.monotonic() - started < 15   # woken by the submission, not the 20 s limit
    assert wms.pilot().requestJob({}, 0.2) is None
    with pytest.raises(Exception, match="waitSeconds must be between 0 and 30"):
        wms.pilot().requestJob({}, 31)


def test_job_sandboxes_follow_the_job(wms: WMS, tmp_path):
    from vmdirac.wms.sandbox_client import make_tarball, upload_sandbox

    (tmp_path / "in.txt").write_text("input")
    store = wms.user("SandboxStore")
    sb_id = upload_sandbox(store.credentials, wms.server.url("WorkloadManagement/SandboxStore"),
                           make_tarball([tmp_path / "in.txt"], tmp_path))
    job_id = wms.submit(jdl(InputSandbox=[sb_id]))
    assert store.getSandboxesForJob(job_id) == {"Input": [sb_id], "Output": []}
    with pytest.raises(NotAuthorized):
        wms.user("SandboxStore", "bob-proxy").getSandboxesForJob(job_id)
    with pytest.raises(NotAuthorized):      # a pilot that does not run it
        wms.pilot("SandboxStore").getSandboxesForJob(job_id)
    wms.pilot().requestJob({})
    assert wms.pilot("SandboxStore").getSandboxesForJob(job_id)["Input"] == [sb_id]
    with pytest.raises(NotAuthorized, match="does not belong to bob"):
        wms.submit(jdl(InputSandbox=[sb_id]), "bob-proxy")
