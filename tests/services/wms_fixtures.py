"""A server with the job services, and helpers to talk to it as users and pilots."""

from __future__ import annotations

import pytest

WMS_SERVICES = ["Configuration/Server", "WorkloadManagement/JobManager", "WorkloadManagement/JobMonitoring",
                "WorkloadManagement/JobStateUpdate", "WorkloadManagement/Matcher",
                "WorkloadManagement/SandboxStore"]


def wms_tree(**job_manager) -> dict:
    return {"Systems": {"WorkloadManagement": {
        "Services": {"JobManager": dict(job_manager), "JobMonitoring": {}, "JobStateUpdate": {},
                     "Matcher": {}, "SandboxStore": {}},
        # Minutes instead of hours, so tests age jobs by minutes.
        "Agents": {"StalledJobAgent": {"StalledTime": 120, "FailedTime": 360, "MatchedTime": 120}},
    }}}


class WMS:
    def __init__(self, server) -> None:
        self.server = server

    def user(self, service: str, cred: str = "alice-proxy"):
        return self.server.client(f"WorkloadManagement/{service}", cred)

    def pilot(self, service: str = "Matcher"):
        """The pilot identity: a host with the GenericPilot property."""
        return self.server.client(f"WorkloadManagement/{service}", "workercert.pem", "workerkey.pem", use_host=True)

    def submit(self, jdl: str, cred: str = "alice-proxy"):
        return self.user("JobManager", cred).submitJob(jdl)

    def states(self, ids, cred: str = "alice-proxy") -> dict:
        return self.user("JobMonitoring", cred).getJobsStates(ids)

    def status(self, job_id: int, cred: str = "admin-proxy") -> tuple[str, str]:
        s = self.states([job_id], cred)[str(job_id)]
        return s["Status"], s["MinorStatus"]

    def logging(self, job_id: int, cred: str = "admin-proxy") -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[4]) for r in self.user("JobMonitoring", cred).getJobLoggingInfo(job_id)]


@pytest.fixture
def wms(start_server, db_url):
    return WMS(start_server(db_url, WMS_SERVICES, wms_tree(MaxParametricJobs=50)))


def jdl(**fields) -> str:
    body = {"Executable": "/bin/echo", "Arguments": "hello", "JobName": "test", **fields}
    lines = []
    for key, value in body.items():
        if isinstance(value, (list, tuple)):
            value = "{" + ", ".join(f'"{v}"' for v in value) + "}"
        elif isinstance(value, str):
            value = f'"{value}"'
        lines.append(f"  {key} = {value};")
    return "[\n" + "\n".join(lines) + "\n]\n"
