"""A server with the job services, users' commands, and pilots running as `dirac-pilot` processes.

The server runs in this process (``start_server``) so that tests can record what the Matcher is
offered; pilots and user commands are real child processes, as on a VM and a user's laptop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from tests.conftest import ROOT, command
from tests.services.wms_fixtures import wms_tree
from vmdirac.core.client import ClientCredentials
from vmdirac.wms import jdl as J
from vmdirac.wms.job_status import FINAL
from tests.waiting import wait_for

SERVICES = ("JobManager", "JobMonitoring", "JobStateUpdate", "Matcher", "SandboxStore")
ACCEPTED = [("Received", "Job accepted", "Unknown", "JobManager"),
            ("Checking", "JobSanity", "Unknown", "JobSanity"),
            ("Checking", "JobScheduling", "Unknown", "JobScheduling"),
            ("Waiting", "Pilot Agent Submission", "Unknown", "JobScheduling")]
STARTED = [("Matched", "Assigned", "Unknown", "Matcher"),
           ("Running", "Downloading Inputs", "Unknown", "JobWrapper"),
           ("Running", "Application", "Unknown", "JobWrapper")]


def job(**attrs: Any) -> str:
    """JDL text (written by our own writer, so quotes in Arguments are escaped properly)."""
    return J.dumps({"JobName": "pilot-test", **attrs})



@dataclass(frozen=True)
class Offer:
    """One claim attempt the Matcher made: who asked, for how many cores, with what result."""

    dn: str
    cores: int
    cpu_time: int
    job_id: int | None


class PilotProcess:
    def __init__(self, argv: list[str], work: Path, stop_file: Path, env: dict) -> None:
        self.work = work
        self.stop_file = stop_file
        self.log_path = work.parent / f"{work.name}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def log(self) -> str:
        return f"--- pilot log ({self.log_path}) ---\n" + self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """Drain through the stop file and wait for the pilot to exit by itself."""
        self.stop_file.touch()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the pilot did not stop within {timeout} s\n{self.log()}") from None

    def kill(self) -> None:
        """Stop it now: SIGTERM drains, a second SIGTERM kills the payloads, SIGKILL at last."""
        for sig in (signal.SIGTERM, signal.SIGTERM):
            if self.proc.poll() is not None:
                return
            self.proc.send_signal(sig)
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Grid:
    """The server, the users' environment, and the pilots started in a test."""

    server: Any
    pki: Any
    tmp: Path
    env: dict
    offers: list[Offer]
    pilots: list[PilotProcess] = field(default_factory=list)

    # ------------------------------------------------------------ users

    def user(self, service: str, cred: str = "alice-proxy"):
        return self.server.client(f"WorkloadManagement/{service}", cred)

    def submit(self, text: str, cred: str = "alice-proxy") -> int:
        return self.user("JobManager", cred).submitJob(text)

    def cli(self, name: str, *args: Any, proxy: str = "alice-proxy") -> str:
        env = {**self.env, "X509_USER_PROXY": self.pki.path(proxy)}
        done = subprocess.run([command(name), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=120, cwd=self.tmp)
        assert done.returncode == 0, f"{name} failed: {done.stderr}"
        return done.stdout

    def credentials(self, cred: str = "alice-proxy") -> ClientCredentials:
        return ClientCredentials(self.pki.path(cred), None, str(self.pki.ca_dir))

    # ------------------------------------------------------------ what happened to a job

    def state(self, job_id: int) -> tuple[str, str, str]:
        s = self.user("JobMonitoring", "admin-proxy").getJobsStates([job_id])[str(job_id)]
        return s["Status"], s["MinorStatus"], s["ApplicationStatus"]

    def records(self, job_id: int) -> list[tuple[str, str, str, str]]:
        """The logging records: (status, minor status, application status, source)."""
        rows = self.user("JobMonitoring", "admin-proxy").getJobLoggingInfo(job_id)
        return [(r[0], r[1], r[2], r[4]) for r in rows]

    def parameters(self, job_id: int) -> dict:
        return self.user("JobMonitoring", "admin-proxy").getJobParameters(job_id)[str(job_id)]

    def attributes(self, job_id: int) -> dict:
        return self.user("JobMonitoring", "admin-proxy").getJobAttributes(job_id)

    def wait_state(self, job_id: int, check: Callable[[tuple[str, str, str]], bool], timeout: float,
                   what: str) -> tuple[str, str, str]:
        return wait_for(lambda: (lambda s: s if check(s) else None)(self.state(job_id)), timeout,
                        f"job {job_id} {what} (now {self.state(job_id)})", self.pilot_logs)

    def wait_final(self, job_id: int, timeout: float = 60) -> tuple[str, str, str]:
        return self.wait_state(job_id, lambda s: s[0] in FINAL, timeout, "to end")

    def offers_to(self, dn: str) -> list[Offer]:
        return [o for o in list(self.offers) if o.dn == dn]

    # ------------------------------------------------------------ pilots

    def start_pilot(self, *extra: Any, cred: str = "host", name: str = "pilot", slots: int = 4,
                    settings: bool = False) -> PilotProcess:
        work = self.tmp / name
        stop_file = self.tmp / f"{name}.stop"
        argv = [command("dirac-pilot"), "--site", "LCG.Test.ch", "--endpoint", "local", "--image", "el9",
                "--instance-id", f"vm-{name}", "--pilot-reference", name, "--slots", str(slots),
                "--work-dir", str(work), "--stop-file", str(stop_file), "--ca", str(self.pki.ca_dir),
                "--heartbeat-period", "1", "--watchdog-period", "0.2", "--kill-grace", "1",
                "--match-wait", "1", "--log-level", "DEBUG"]
        if settings:
            argv += ["--client-config", str(self.env["VMDIRAC_CLIENT_CONFIG"])]
        else:
            argv += ["--url", f"https://localhost:{self.server.port}"]
        if cred == "host":
            argv += ["--cert", self.pki.path("workercert.pem"), "--key", self.pki.path("workerkey.pem")]
        else:
            argv += ["--proxy", self.pki.path(cred)]
        env = {k: v for k, v in self.env.items() if not k.startswith("X509_")}
        pilot = PilotProcess(argv + [str(a) for a in extra], work, stop_file, env)
        self.pilots.append(pilot)
        return pilot

    def pilot_logs(self) -> str:
        return "\n".join(p.log() for p in self.pilots)


def publish_urls(server) -> None:
    """Commit the service URLs (known once the server has its port) as an administrator would."""
    cs = server.client("Configuration/Server", "alice-proxy2")
    answer = cs.getCompressedData()
    tree = yaml.safe_load(zlib.decompress(answer["data"]))
    tree["Systems"]["WorkloadManagement"]["URLs"] = {s: server.url(f"WorkloadManagement/{s}") for s in SERVICES}
    cs.commitNewData(yaml.safe_dump(tree), answer["version"], "service URLs of the test server")


def record_offers(server) -> list[Offer]:
    """Every claim the Matcher attempts, in order (wrapped on the live service object)."""
    matcher = next(s for s in server.services if s.name == "Matcher")
    original = matcher._match_batch
    offers: list[Offer] = []

    def recording(conn, requests):
        got = original(conn, requests)
        offers.extend(Offer(r.matched_by, r.res.cores, r.res.cpu_time, g["JobID"] if g else None)
                      for r, g in zip(requests, got))
        return got

    matcher._match_batch = recording
    return offers


@pytest.fixture
def grid(start_server, pki, db_url, tmp_path):
    server = start_server(db_url, ["Configuration/Server", *(f"WorkloadManagement/{s}" for s in SERVICES)],
                          wms_tree())
    publish_urls(server)
    settings = tmp_path / "dirac.yaml"
    settings.write_text(yaml.safe_dump({"ConfigurationServer": [server.url("Configuration/Server")],
                                        "CACertificates": str(pki.ca_dir)}))
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"}, "HOME": str(home),
           "VMDIRAC_CLIENT_CONFIG": str(settings), "PYTHONPATH": str(ROOT)}
    g = Grid(server, pki, tmp_path, env, record_offers(server))
    yield g
    for pilot in g.pilots:
        pilot.kill()
