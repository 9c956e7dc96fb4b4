"""The pilot end to end: `dirac-pilot` processes take jobs users submitted and run them to the end.

Every test runs on SQLite and on MySQL. Payloads synchronise with the test and with each other
through files (barriers), never through sleeps; every wait is a poll with a deadline.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.pilot.pilot_fixtures import ACCEPTED, STARTED, Grid, grid, job, wait_for  # noqa: F401  (fixture)
from tests.pki import ALICE, OTHER_HOST
from vmdirac.wms.sandbox_client import download_sandbox, sandbox_url

UPLOADING = ("Running", "Uploading Outputs", "Unknown", "JobWrapper")


def app(status: str) -> tuple[str, str, str, str]:
    """The record a payload's ``set-application-status`` leaves."""
    return ("Running", "Application", status, "Payload")


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (reparented children wait for init to reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def sh(script: str) -> dict:
    return {"Executable": "/bin/sh", "Arguments": f"-c '{script}'"}


def output_files(grid: Grid, job_id: int, dest: Path) -> dict[str, str]:
    """The job's output sandbox as its owner downloads it: {name: content}."""
    sandboxes = grid.user("SandboxStore").getSandboxesForJob(job_id)["Output"]
    assert len(sandboxes) == 1, sandboxes
    url = sandbox_url(grid.server.url("WorkloadManagement/SandboxStore"), "download")
    files = download_sandbox(grid.credentials(), url, sandboxes[0], dest)
    return {str(f.relative_to(dest)): f.read_text() for f in files}


def test_jobs_end_in_the_right_state_with_their_records_and_outputs(grid: Grid, tmp_path):
    # An input sandbox: a script and its data, uploaded and submitted by the user's own command.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.txt").write_text("hello sandbox\n")
    (inputs / "analyse.sh").write_text("#!/bin/sh\nset-application-status Gauss v36r1 Running\n"
                                       "tr a-z A-Z < data.txt > result.txt\necho analysed $DIRACJOBID at $DIRACSITE\n"
                                       "set-application-status Gauss v36r1 Success\n")
    (inputs / "job.jdl").write_text(job(Executable="analyse.sh", InputSandbox=["analyse.sh", "data.txt"],
                                        OutputSandbox=["result.txt", "std.out", "nothing.here"]))
    sandboxed = int(grid.cli("dirac-wms-job-submit", inputs / "job.jdl").split("=")[1])

    pid_file = tmp_path / "killme.pid"
    good = grid.submit(job(**sh("echo hello from $DIRACJOBID; echo to stderr >&2"),
                           OutputSandbox=["std.out", "std.err"]))
    bad = grid.submit(job(**sh("echo about to fail; exit 3")))
    doomed = grid.submit(job(**sh(f"echo $$ > {pid_file}; set-application-status sleeping; exec sleep 120")))
    greedy = grid.submit(job(**sh("while :; do :; done"), CPUTime=2))
    pilot = grid.start_pilot(slots=4, settings=True)

    # The user kills a job while its payload runs: gone within a heartbeat (1 s) and the grace.
    grid.wait_state(doomed, lambda s: s[2] == "sleeping", 30, "to run its payload")
    payload_pid = int(pid_file.read_text())
    assert grid.user("JobManager").killJob(doomed)["Successful"] == [doomed]
    assert grid.wait_final(doomed, 10)[:2] == ("Killed", "Killed by user")
    assert not alive(payload_pid)

    assert grid.wait_final(good)[:2] == ("Done", "Execution Complete")
    assert grid.wait_final(bad)[:2] == ("Failed", "Application Finished With Errors")
    assert grid.wait_final(greedy, 30)[:2] == ("Failed", "Watchdog identified this job as exceeding its CPU time")
    assert grid.wait_final(sandboxed)[:2] == ("Done", "Execution Complete")
    assert pilot.stop() == 0

    assert grid.records(good) == ACCEPTED + STARTED + [UPLOADING, ("Done", "Execution Complete", "Unknown",
                                                                     "JobWrapper")]
    assert grid.records(bad) == ACCEPTED + STARTED + [UPLOADING, ("Failed", "Application Finished With Errors",
                                                                    "Unknown", "JobWrapper")]
    assert grid.records(doomed) == ACCEPTED + STARTED + [
        app("sleeping"), ("Running", "Marked for termination", "sleeping", "JobManager (alice)"),
        ("Running", "Uploading Outputs", "sleeping", "JobWrapper"),
        ("Killed", "Killed by user", "sleeping", "JobWrapper")]
    assert grid.records(greedy)[-2:] == [UPLOADING, ("Failed", "Watchdog identified this job as exceeding its "
                                                               "CPU time", "Unknown", "JobWrapper")]
    assert grid.records(sandboxed) == ACCEPTED + STARTED + [
        app("Gauss v36r1 Running"), app("Gauss v36r1 Success"),
        ("Running", "Uploading Outputs", "Gauss v36r1 Success", "JobWrapper"),
        ("Done", "Execution Complete", "Gauss v36r1 Success", "JobWrapper")]

    # What each job reported about itself.
    assert grid.parameters(good)["ExitCode"] == "0"
    bad_params = grid.parameters(bad)
    assert bad_params["ExitCode"] == "3" and float(bad_params["CPUConsumed"]) >= 0
    assert float(grid.parameters(greedy)["CPUConsumed"]) > 2
    params = grid.parameters(sandboxed)
    assert params["OutputSandboxMissingFiles"] == "nothing.here"
    assert params["HostName"] and params["PilotReference"] == "pilot" and params["InstanceID"] == "vm-pilot"
    attrs = grid.attributes(good)
    assert attrs["Site"] == "LCG.Test.ch" and attrs["MatchedBy"] == OTHER_HOST
    assert attrs["StartExecTime"] <= attrs["EndExecTime"] and attrs["HeartBeatTime"] is not None

    # Outputs come back to the owner: stdout and stderr, and the files the JDL named.
    assert output_files(grid, good, tmp_path / "good") == {
        "std.out": f"hello from {good}\n", "std.err": "to stderr\n"}
    assert output_files(grid, bad, tmp_path / "bad")["std.out"] == "about to fail\n"
    listing = grid.cli("dirac-wms-job-get-output", sandboxed, "-D", tmp_path / "got")
    assert f"got/{sandboxed}" in listing
    got = tmp_path / "got" / str(sandboxed)
    assert (got / "result.txt").read_text() == "HELLO SANDBOX\n"
    assert (got / "std.out").read_text() == f"analysed {sandboxed} at LCG.Test.ch\n"
    assert sorted(p.name for p in got.iterdir()) == ["result.txt", "std.err", "std.out"]   # std.err: always
    # Every job directory is gone.
    assert [p.name for p in pilot.work.iterdir() if not p.name.startswith(".")] == []


def barrier(directory: Path, count: int) -> str:
    """A payload that marks its start, then waits (at most 60 s, else exit 7) until ``count``
    payloads have started: it ends Done only if they all ran at the same time."""
    directory.mkdir(exist_ok=True)
    return (f"touch {directory}/$DIRACJOBID; echo cores $DIRAC_PROCESSORS; n=0; "
            f"while [ $(ls {directory} | wc -l) -lt {count} ]; do n=$((n+1)); [ $n -gt 600 ] && exit 7; "
            f"sleep 0.1; done")


def matches(grid: Grid, dn: str, since: int = 0) -> list[tuple[int, int]]:
    """(cores offered, job id) of the requests of ``dn`` that got a job, in order."""
    return [(o.cores, o.job_id) for o in grid.offers[since:] if o.dn == dn and o.job_id]


def test_a_four_slot_pilot_runs_four_jobs_at_once_and_a_two_core_job_takes_two_slots(grid: Grid, tmp_path):
    pilot = grid.start_pilot(slots=4)
    ids = grid.user("JobManager").submitJobs([job(**sh(barrier(tmp_path / "four", 4))) for _ in range(4)])
    for job_id in ids:
        assert grid.wait_final(job_id)[:2] == ("Done", "Execution Complete"), (grid.records(job_id),
                                                                                grid.parameters(job_id))
    # One slot per job: each request offered what was still free.
    assert [cores for cores, _ in matches(grid, OTHER_HOST)] == [4, 3, 2, 1]
    assert sorted(j for _, j in matches(grid, OTHER_HOST)) == ids

    # Idle again (all four slots offered), a two-core job takes two slots: the next request offers
    # two, and two one-core jobs run beside it.
    since = len(grid.offers)
    wait_for(lambda: any(o.dn == OTHER_HOST and o.cores == 4 for o in grid.offers[since:]), 30,
             "the pilot to offer its four slots again", grid.pilot_logs)
    multi = grid.submit(job(**sh(barrier(tmp_path / "three", 3)), NumberOfProcessors=2))
    wait_for(lambda: matches(grid, OTHER_HOST, since), 30, "the two-core job to be matched", grid.pilot_logs)
    singles = grid.user("JobManager").submitJobs([job(**sh(barrier(tmp_path / "three", 3))) for _ in range(2)])
    for job_id in [multi, *singles]:
        assert grid.wait_final(job_id)[:2] == ("Done", "Execution Complete"), grid.records(job_id)
    got = matches(grid, OTHER_HOST, since)
    assert got[0] == (4, multi) and [cores for cores, _ in got[1:]] == [2, 1]
    mine = [o for o in grid.offers[since:] if o.dn == OTHER_HOST]
    first = next(i for i, o in enumerate(mine) if o.job_id == multi)
    last = max(i for i, o in enumerate(mine) if o.job_id in singles)
    assert {o.cores for o in mine[first + 1:last + 1]} <= {1, 2}    # never more than what was free
    assert pilot.stop() == 0
    assert grid.parameters(multi)["NumberOfProcessors"] == "2"
    assert output_files(grid, multi, tmp_path / "multi")["std.out"].startswith("cores 2\n")


def test_a_user_proxy_pilot_takes_only_its_users_jobs_that_fit_its_time(grid: Grid):
    bobs = grid.submit(job(**sh("echo bob")), "bob-proxy")
    too_long = grid.submit(job(**sh("echo too long"), CPUTime=3600))   # more than the pilot has left
    short = grid.submit(job(**sh("echo mine; set-application-status fine"), CPUTime=300))
    sleepy = grid.submit(job(**sh("exec sleep 120"), CPUTime=300))
    pilot = grid.start_pilot("--time-limit", 1000, "--max-wall-clock-time", 2, cred="alice-proxy", slots=2)
    assert grid.wait_final(short) == ("Done", "Execution Complete", "fine")
    assert grid.wait_final(sleepy, 30)[:2] == ("Failed", "Job has exceeded maximum wall clock time")
    # With two free slots again the pilot asks and gets nothing: neither Bob's job nor the long one.
    since = len(grid.offers)
    wait_for(lambda: any(o.dn == ALICE and o.cores == 2 and o.job_id is None for o in grid.offers[since:]), 30,
             "an empty answer to the pilot", grid.pilot_logs)
    assert grid.state(bobs)[0] == grid.state(too_long)[0] == "Waiting"
    assert pilot.stop() == 0
    offers = grid.offers_to(ALICE)
    assert all(0 < o.cpu_time <= 1000 for o in offers)
    assert sorted(o.job_id for o in offers if o.job_id) == [short, sleepy]
    assert grid.attributes(short)["MatchedBy"] == ALICE
    assert grid.records(sleepy)[-1] == ("Failed", "Job has exceeded maximum wall clock time", "Unknown",
                                        "JobWrapper")


def test_sigterm_drains_and_a_second_one_kills_the_payloads(grid: Grid, tmp_path):
    release = tmp_path / "release"
    finishing = grid.submit(job(**sh(f"set-application-status waiting; while [ ! -e {release} ]; do sleep 0.1; "
                                     f"done; echo released")))
    endless = grid.submit(job(**sh("set-application-status forever; exec sleep 120")))
    pilot = grid.start_pilot(slots=2)
    grid.wait_state(finishing, lambda s: s[2] == "waiting", 30, "to run")
    grid.wait_state(endless, lambda s: s[2] == "forever", 30, "to run")
    pilot.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining: SIGTERM received" in pilot.log(), 10, "the pilot to drain", pilot.log)
    late = grid.submit(job(**sh("echo too late")))
    release.touch()
    assert grid.wait_final(finishing)[:2] == ("Done", "Execution Complete")     # running jobs end
    pilot.proc.send_signal(signal.SIGTERM)
    assert grid.wait_final(endless, 15)[:2] == ("Failed", "Payload killed: the pilot was stopped")
    assert pilot.proc.wait(15) == 0
    assert grid.state(late)[0] == "Waiting"                                       # and nothing new starts


def test_an_idle_pilot_stops_after_its_empty_matches(grid: Grid):
    pilot = grid.start_pilot("--max-empty-matches", 3, "--match-wait", 0, "--polling-interval", 0.05, slots=1)
    assert pilot.proc.wait(30) == 0, pilot.log()
    assert "draining: 3 consecutive empty matches" in pilot.log()
    assert [(o.cores, o.job_id) for o in grid.offers_to(OTHER_HOST)] == [(1, None)] * 3
