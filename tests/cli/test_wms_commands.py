"""The dirac-wms-job-* commands as child processes, against a real server process, as users do."""

from __future__ import annotations

import os
import pty
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
from vmdirac.core.client import ClientCredentials
from vmdirac.core.exceptions import NotAuthorized
from vmdirac.wms import jdl as J
from vmdirac.wms.sandbox_client import download_sandbox, make_tarball, sandbox_url

SERVICES = ("JobManager", "JobMonitoring", "JobStateUpdate", "Matcher", "SandboxStore")
STATUS_LINE = re.compile(r"^JobID=(\d+) Status=([^;]*); MinorStatus=([^;]*); Site=([^;]*);$")


@dataclass
class Site:
    """A server process, and a user's shell pointed at it (own HOME, settings, proxy)."""

    server: ServerProcess
    pki: object
    env: dict
    work: Path

    def run(self, name: str, *args: str, proxy: str = "alice-proxy") -> subprocess.CompletedProcess:
        env = {**self.env, "X509_USER_PROXY": self.pki.path(proxy)}
        return subprocess.run([command(name), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=120, cwd=self.work)

    def ok(self, name: str, *args: str, proxy: str = "alice-proxy") -> str:
        done = self.run(name, *args, proxy=proxy)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return done.stdout

    def submit(self, text: str, name: str = "job.jdl") -> int | list[int]:
        path = self.work / name
        path.write_text(text)
        out = self.ok("dirac-wms-job-submit", path)
        return yaml.safe_load(out.split("=", 1)[1])

    def rpc(self, service: str, cred: str = "alice-proxy"):
        return self.server.client(f"WorkloadManagement/{service}", cred)

    def pilot(self, service: str):
        """The pilot identity: a host certificate with the GenericPilot property."""
        return self.server.client(f"WorkloadManagement/{service}", "workercert.pem", "workerkey.pem", use_host=True)

    def status(self, job_id: int) -> str:
        return self.rpc("JobMonitoring").getJobsStates([job_id])[str(job_id)]["Status"]

    def run_and_fail(self, job_id: int) -> None:
        """What a pilot does with a job that goes wrong: take it, start it, report it Failed."""
        assert self.pilot("Matcher").requestJob({"Site": "LCG.Test.ch"})["JobID"] == job_id
        update = self.pilot("JobStateUpdate")
        update.setJobStatus(job_id, "Running", "Application", "JobWrapper")
        update.setJobStatus(job_id, "Failed", "Application Finished With Errors", "JobWrapper")


def creds(site: Site, proxy: str) -> ClientCredentials:
    return ClientCredentials(site.pki.path(proxy), None, str(site.pki.ca_dir))


def publish_urls(server: ServerProcess) -> None:
    """Commit the service URLs (known once the server has its port) as an administrator would."""
    cs = server.client("Configuration/Server", "alice-proxy2")
    answer = cs.getCompressedData()
    tree = yaml.safe_load(zlib.decompress(answer["data"]))
    tree["Systems"]["WorkloadManagement"]["URLs"] = {s: server.url(f"WorkloadManagement/{s}") for s in SERVICES}
    cs.commitNewData(yaml.safe_dump(tree), answer["version"], "service URLs of the test server")


@pytest.fixture
def site(pki, tmp_path, db_url):
    server = ServerProcess(pki, tmp_path / "server", base_tree(wms_tree(MaxParametricJobs=50)), db_url)
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
        yield Site(server, pki, env, work)
    finally:
        server.stop()


def statuses(stdout: str) -> dict[int, tuple[str, str, str]]:
    lines = stdout.splitlines()
    found = [STATUS_LINE.match(line) for line in lines]
    assert all(found), stdout
    return {int(m[1]): (m[2], m[3], m[4]) for m in found}


# ---------------------------------------------------------------- submit and follow

def test_submit_one_and_parametric_jobs_and_read_their_status(site: Site):
    ids_file = site.work / "ids.txt"
    (site.work / "one.jdl").write_text(jdl(JobName="one"))
    (site.work / "many.jdl").write_text(jdl(JobName="many", Parameters=["a", "b", "c"]))
    out = site.ok("dirac-wms-job-submit", "one.jdl", "many.jdl", "-f", ids_file)
    one, many = out.splitlines()
    assert re.fullmatch(r"JobID = \d+", one)
    assert re.fullmatch(r"JobID = \[\d+, \d+, \d+\]", many)
    job_id, param_ids = int(one.split()[-1]), yaml.safe_load(many.split("=", 1)[1])
    assert ids_file.read_text().split() == [str(i) for i in [job_id, *param_ids]]

    seen = statuses(site.ok("dirac-wms-job-status", "-f", ids_file))
    assert list(seen) == [job_id, *param_ids]
    assert set(seen.values()) == {("Waiting", "Pilot Agent Submission", "ANY")}
    ranged = statuses(site.ok("dirac-wms-job-status", f"{param_ids[0]}-{param_ids[-1]}"))
    assert list(ranged) == param_ids
    names = [site.rpc("JobMonitoring").getJobAttribute(i, "JobName") for i in (job_id, *param_ids)]
    assert names == ["one", "many", "many", "many"]


def test_status_of_unknown_and_other_users_jobs(site: Site):
    mine = site.submit(jdl())
    done = site.run("dirac-wms-job-status", mine, 99999)
    assert done.returncode == 1
    assert statuses(done.stdout) == {mine: ("Waiting", "Pilot Agent Submission", "ANY")}
    assert done.stderr == "ERROR: job 99999 does not exist or is not yours\n"
    bobs = site.run("dirac-wms-job-status", mine, proxy="bob-proxy")
    assert bobs.returncode == 1 and bobs.stdout == ""
    assert bobs.stderr == f"ERROR: job {mine} does not exist or is not yours\n"


def test_logging_info_and_parameters(site: Site):
    job_id = site.submit(jdl(JobName="logged"))
    site.run_and_fail(job_id)
    out = site.ok("dirac-wms-job-logging-info", job_id)
    header, *rows = out.splitlines()
    assert header.split() == ["Status", "MinorStatus", "ApplicationStatus", "DateTime", "(UTC)", "Source"]
    cells = [re.split(r"\s{2,}", row) for row in rows]
    assert [(c[0], c[1], c[-1]) for c in cells] == [
        ("Received", "Job accepted", "JobManager"), ("Checking", "JobSanity", "JobSanity"),
        ("Checking", "JobScheduling", "JobScheduling"), ("Waiting", "Pilot Agent Submission", "JobScheduling"),
        ("Matched", "Assigned", "Matcher"), ("Running", "Application", "JobWrapper"),
        ("Failed", "Application Finished With Errors", "JobWrapper")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", c[3]) for c in cells)

    site.pilot("JobStateUpdate").setJobParameters(job_id, [["CPUNormalizationFactor", "6.8"]])
    lines = site.ok("dirac-wms-job-parameters", job_id).splitlines()
    assert lines[0] == f"JobID: {job_id}"
    for line in ("JobName: logged", "Owner: alice", "Status: Failed", "Site: LCG.Test.ch",
                 "CPUNormalizationFactor: 6.8", "RescheduleCounter: 0"):
        assert line in lines
    assert any(re.fullmatch(r"EndExecTime: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in lines)
    other = site.run("dirac-wms-job-logging-info", job_id, proxy="bob-proxy")
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr == f"ERROR: job {job_id} does not exist or is not yours\n"


# ---------------------------------------------------------------- acting on jobs

def test_kill_then_status_is_killed_and_bob_cannot_kill(site: Site):
    job_id, other = site.submit(jdl(), "a.jdl"), site.submit(jdl(), "b.jdl")
    bobs = site.run("dirac-wms-job-kill", job_id, proxy="bob-proxy")
    assert bobs.returncode == 1 and bobs.stdout == ""
    assert bobs.stderr == f"ERROR: job {job_id} does not exist or is not yours\n"
    assert site.status(job_id) == "Waiting"

    assert site.ok("dirac-wms-job-kill", job_id) == f"Killed job {job_id}\n"
    assert statuses(site.ok("dirac-wms-job-status", job_id)) == {job_id: ("Killed", "Killed by user", "ANY")}
    again = site.run("dirac-wms-job-kill", job_id, other)
    assert again.returncode == 1
    assert again.stdout == f"Killed job {other}\n"
    assert again.stderr == f"ERROR: job {job_id} is Killed: nothing to kill\n"


def test_reschedule_a_failed_job(site: Site):
    job_id = site.submit(jdl())
    site.run_and_fail(job_id)
    assert site.status(job_id) == "Failed"
    assert site.ok("dirac-wms-job-reschedule", job_id) == f"Rescheduled job {job_id}\n"
    assert site.status(job_id) == "Waiting"
    assert site.rpc("JobMonitoring").getJobAttribute(job_id, "RescheduleCounter") == 1
    bobs = site.run("dirac-wms-job-reschedule", job_id, proxy="bob-proxy")
    assert (bobs.returncode, bobs.stdout) == (1, "")
    assert bobs.stderr == f"ERROR: job {job_id} does not exist or is not yours\n"


def test_delete(site: Site):
    waiting, running = site.submit(jdl(), "a.jdl"), site.submit(jdl(), "b.jdl")
    assert site.pilot("Matcher").requestJob({})["JobID"] == waiting  # the older job is taken first
    site.pilot("JobStateUpdate").setJobStatus(waiting, "Running", "Application", "JobWrapper")
    done = site.run("dirac-wms-job-delete", waiting, running)
    assert done.returncode == 1
    assert done.stdout == f"Deleted job {running}\n"
    assert done.stderr == f"ERROR: job {waiting} is Running: kill it before deleting it\n"
    assert (site.status(waiting), site.status(running)) == ("Running", "Deleted")


ID_COMMANDS = ["dirac-wms-job-status", "dirac-wms-job-kill", "dirac-wms-job-delete", "dirac-wms-job-reschedule",
               "dirac-wms-job-logging-info", "dirac-wms-job-parameters", "dirac-wms-job-get-output"]


@pytest.mark.parametrize("name", ID_COMMANDS)
def test_bad_ids_are_refused_before_any_call(tmp_path, name):
    # No client settings at all: a command that tried to reach a server would say so instead.
    env = {**os.environ, "HOME": str(tmp_path), "VMDIRAC_CLIENT_CONFIG": str(tmp_path / "none.yaml")}
    (tmp_path / "ids.txt").write_text("12\n# a comment\n\n13-14\nabc\n")
    for args, message in ((("12", "abc"), "'abc' is not a job id"), (("0",), "'0' is not a job id"),
                          (("12,x1",), "'x1' is not a job id"),
                          (("20-10",), "'20-10' is not a range of job ids (low-high)"),
                          (("1-20000",), "'1-20000' stands for more than 10000 jobs"),
                          ((), "no job id given"),
                          (("-f", "ids.txt"), "ids.txt line 5: 'abc' is not a job id"),
                          (("-f", "missing.txt"), "cannot read missing.txt: No such file or directory"),
                          (("12", "--bogus"), f"unrecognized arguments: --bogus (see {name} --help)")):
        done = subprocess.run([command(name), *args], env=env, capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", f"ERROR: {message}\n"), args
    good = subprocess.run([command(name), "12"], env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 1 and good.stderr.startswith("ERROR: no client configuration at ")


@pytest.mark.parametrize("name", [*ID_COMMANDS, "dirac-wms-job-submit"])
def test_help_shows_an_example(name):
    done = subprocess.run([command(name), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"example:\n  $ {name} " in done.stdout


# ---------------------------------------------------------------- sandboxes

def test_submit_uploads_local_input_sandbox_files(site: Site):
    (site.work / "jobs" / "data").mkdir(parents=True)
    (site.work / "jobs" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (site.work / "jobs" / "data" / "in.txt").write_text("input\n")
    job_id = site.submit(jdl(InputSandbox=["run.sh", "data/in.txt"]), "jobs/job.jdl")
    sandbox = J.parse(site.rpc("JobMonitoring").getJobJDL(job_id))["InputSandbox"]
    assert len(sandbox) == 1 and sandbox[0].startswith("SB:")
    assert site.rpc("SandboxStore").getSandboxesForJob(job_id) == {"Input": sandbox, "Output": []}
    # What a pilot's JobWrapper gets back is the two files, relative to the JDL's directory.
    got = site.work / "unpacked"
    url = sandbox_url(site.server.url("WorkloadManagement/SandboxStore"), "download")
    files = download_sandbox(creds(site, "alice-proxy"), url, sandbox[0], got)
    assert sorted(p.relative_to(got).as_posix() for p in files) == ["data/in.txt", "run.sh"]


def test_missing_jdl_or_sandbox_file_submits_nothing(site: Site):
    (site.work / "good.jdl").write_text(jdl())
    (site.work / "bad.jdl").write_text(jdl(InputSandbox=["SB:ProductionSandboxSE|/x.tar", "nothere.txt"]))
    done = site.run("dirac-wms-job-submit", "good.jdl", "bad.jdl")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"ERROR: bad.jdl: InputSandbox file nothere.txt not found (looked in {site.work})\n")
    missing = site.run("dirac-wms-job-submit", "good.jdl", "nothere.jdl")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "ERROR: cannot read nothere.jdl: No such file or directory\n"
    (site.work / "broken.jdl").write_text('[\n  Executable = "/bin/true";\n  Arguments = "x"\n  JobName = "y";\n]\n')
    broken = site.run("dirac-wms-job-submit", "good.jdl", "broken.jdl")
    assert broken.returncode == 1 and broken.stderr.startswith("ERROR: broken.jdl: line 3: ")
    assert broken.stderr.count("\n") == 1
    assert site.rpc("JobMonitoring").getJobs() == []


def test_the_server_refusing_a_job_is_one_line_per_file(site: Site):
    (site.work / "good.jdl").write_text(jdl())
    (site.work / "lfn.jdl").write_text(jdl(InputSandbox=["LFN:/vo/user/a/file.txt"]))
    done = site.run("dirac-wms-job-submit", "lfn.jdl", "good.jdl")
    assert done.returncode == 1
    assert re.fullmatch(r"JobID = \d+\n", done.stdout)
    assert done.stderr.startswith("ERROR: lfn.jdl: InputSandbox LFN:/vo/user/a/file.txt: LFNs need a file catalogue")
    assert done.stderr.count("\n") == 1


def finish_with_output(site: Site, job_id: int, files: dict[str, str]) -> None:
    """A job's end as the JobWrapper does it: output uploaded with the owner's proxy (the pilot
    holds it delegated), linked to the job as its Output sandbox, then Done."""
    for name, text in files.items():
        (site.work / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (site.work / "out" / name).write_text(text)
    tarball = make_tarball([Path(n) for n in files], site.work / "out", site.work / "out.tar.gz")
    site.pilot("SandboxStore").storeOutputSandbox(job_id, tarball.read_bytes())
    site.pilot("JobStateUpdate").setJobStatus(job_id, "Done", "Execution Complete", "JobWrapper")


def test_get_output_downloads_the_output_sandbox(site: Site):
    job_id = site.submit(jdl())
    assert site.pilot("Matcher").requestJob({})["JobID"] == job_id
    site.pilot("JobStateUpdate").setJobStatus(job_id, "Running", "Application", "JobWrapper")
    early = site.run("dirac-wms-job-get-output", job_id)
    assert (early.returncode, early.stdout) == (1, "")
    assert early.stderr == (f"ERROR: job {job_id} is Running: no output sandbox yet "
                            "(it is uploaded when the job ends)\n")
    assert not (site.work / str(job_id)).exists()

    finish_with_output(site, job_id, {"std.out": "hello\n", "logs/app.log": "fine\n"})
    out = site.ok("dirac-wms-job-get-output", job_id, "-D", "results")
    assert out == f"Job output sandbox retrieved in results/{job_id}/\n  logs/app.log\n  std.out\n"
    assert (site.work / "results" / str(job_id) / "std.out").read_text() == "hello\n"
    assert (site.work / "results" / str(job_id) / "logs" / "app.log").read_text() == "fine\n"
    here = site.ok("dirac-wms-job-get-output", job_id)
    assert here.startswith(f"Job output sandbox retrieved in {job_id}/\n")
    assert (site.work / str(job_id) / "std.out").exists()
    bobs = site.run("dirac-wms-job-get-output", job_id, proxy="bob-proxy")
    assert bobs.returncode == 1 and bobs.stderr == f"ERROR: job {job_id} does not exist or is not yours\n"


def test_get_output_of_a_finished_job_without_output(site: Site):
    job_id = site.submit(jdl())
    site.run_and_fail(job_id)
    done = site.run("dirac-wms-job-get-output", job_id)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"ERROR: job {job_id} is Failed and has no output sandbox\n"


def test_a_pilot_attaches_the_output_sandbox_of_its_job(site: Site):
    job_id = site.submit(jdl())
    assert site.pilot("Matcher").requestJob({})["JobID"] == job_id
    (site.work / "std.out").write_text("hello\n")
    tarball = make_tarball([Path("std.out")], site.work, site.work / "out.tar.gz")
    sb_id = site.pilot("SandboxStore").storeOutputSandbox(job_id, tarball.read_bytes())
    assert site.rpc("SandboxStore").getSandboxesForJob(job_id)["Output"] == [sb_id]
    with pytest.raises(NotAuthorized):   # the job's owner is not the pilot running it
        site.rpc("SandboxStore").storeOutputSandbox(job_id, tarball.read_bytes())


def test_a_large_upload_shows_a_progress_bar_on_a_terminal_only(site: Site):
    (site.work / "big.bin").write_bytes(os.urandom(3 << 20))   # random: the tarball stays 3 MiB
    (site.work / "big.jdl").write_text(jdl(InputSandbox=["big.bin"]))
    piped = site.ok("dirac-wms-job-submit", "big.jdl")
    assert re.fullmatch(r"JobID = \d+\n", piped)
    master, slave = pty.openpty()
    proc = subprocess.Popen([command("dirac-wms-job-submit"), "big.jdl"], stdout=slave, stderr=subprocess.PIPE,
                            env={**site.env, "X509_USER_PROXY": site.pki.path("alice-proxy")}, cwd=site.work)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:   # EIO: the command has exited and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(120) == 0, proc.stderr.read()
    text = seen.decode()
    assert "] 100% 3.0/3.0 MiB" in text and re.search(r"JobID = \d+", text)
