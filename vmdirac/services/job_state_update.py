"""WorkloadManagement/JobStateUpdate: what a pilot reports about the job it runs.

Only the pilot that matched the job (same identity) or a JobAdministrator may report for it;
the answer to a heartbeat carries the job's pending commands (``{"Kill": ""}``).
"""

from __future__ import annotations

from typing import Any

from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import IllegalTransition, InvalidArgument, NotAuthorized
from vmdirac.core.export import Caller, export
from vmdirac.logic.job_access import is_job_admin, runs_job
from vmdirac.services.wms_base import WMSService
from vmdirac.wms.job_status import FINAL, JobStatus as S, parse_status

REPORTERS = ("GenericPilot", "JobAdministrator", "NormalUser")
MAX_PARAMETER = 64 * 1024


class JobStateUpdateService(WMSService):
    name = "JobStateUpdate"

    def _check_reporter(self, caller: Caller, job_id: int) -> dict:
        job = self.store.jobdb.attributes([job_id], ["Status", "MatchedBy", "Owner", "VO"]).get(job_id)
        if job is None:
            raise NotAuthorized(f"job {job_id} is not run by this pilot", job_id=job_id)
        if is_job_admin(caller) and (caller.is_host or job["VO"] == caller.vo):
            return job
        if not runs_job(caller, job):
            raise NotAuthorized(f"job {job_id} is not run by this pilot", job_id=job_id)
        return job

    @export(properties=REPORTERS)
    def setJobStatus(self, caller: Caller, jobID: int, status: str = "", minorStatus: str = "",
                     source: str = "Unknown") -> dict:
        """Set status and/or minor status; the transition is checked. Returns the new state."""
        self._check_reporter(caller, jobID)
        new = parse_status(status) if status else None
        attributes: dict[str, Any] = {}
        now = utcnow()
        if new == S.RUNNING:
            attributes = {"StartExecTime": now, "HeartBeatTime": now}
        elif new in FINAL:
            attributes = {"EndExecTime": now}
        return self.store.jobdb.set_status(jobID, new, minorStatus or None, source=source[:64],
                                           attributes=attributes)

    @export(properties=REPORTERS)
    def setJobApplicationStatus(self, caller: Caller, jobID: int, appStatus: str, source: str = "Unknown") -> dict:
        self._check_reporter(caller, jobID)
        return self.store.jobdb.set_status(jobID, None, None, application=appStatus, source=source[:64])

    @export(properties=REPORTERS)
    def setJobParameter(self, caller: Caller, jobID: int, name: str, value: str) -> None:
        self.setJobParameters(caller, jobID, [[name, value]])

    @export(properties=REPORTERS)
    def setJobParameters(self, caller: Caller, jobID: int, parameters: list[list[str]]) -> None:
        self._check_reporter(caller, jobID)
        params = {}
        for item in parameters:
            if len(item) != 2 or not item[0] or len(item[0]) > 100:
                raise InvalidArgument("parameters are [name, value] pairs with names of 1 to 100 characters")
            if len(item[1]) > MAX_PARAMETER:
                raise InvalidArgument(f"parameter {item[0]} is over {MAX_PARAMETER} characters")
            params[item[0]] = item[1]
        self.store.jobdb.set_parameters(jobID, params)

    @export(properties=REPORTERS)
    def sendHeartBeat(self, caller: Caller, jobID: int, dynamicData: dict, staticData: dict | None = None) -> dict:
        """Record a heartbeat (CPU, memory, wall time, ...); returns pending commands."""
        job = self._check_reporter(caller, jobID)
        if job["Status"] in FINAL:
            raise IllegalTransition(f"job {jobID} is {job['Status']}: it sends no more heartbeats", job_id=jobID)
        values = {str(k)[:100]: str(v)[:1024] for k, v in {**(staticData or {}), **dynamicData}.items()}
        if len(values) > 100:
            raise InvalidArgument("at most 100 heartbeat values")
        commands = self.store.jobdb.heartbeat(jobID, values)
        if job["Status"] == S.STALLED:
            self.store.jobdb.set_status(jobID, S.RUNNING, "Application", source="JobStateUpdate",
                                        expect=(S.STALLED,))
        return commands
