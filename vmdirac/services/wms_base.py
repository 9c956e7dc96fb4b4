"""What the job services share: the JobStore over the process's DB, limits from the configuration."""

from __future__ import annotations

from dataclasses import dataclass

from vmdirac.core.export import Caller, Service
from vmdirac.logic.job_access import check_access
from vmdirac.logic.jobs import JobLimits, JobStore


NEW_JOBS = "jobs"  # notifier topic: jobs became Waiting


@dataclass(frozen=True)
class JobScheduling:
    """``Operations/Defaults/JobScheduling``."""

    MaxRescheduling: int = 3


@dataclass(frozen=True)
class JobManagerOptions:
    """``Systems/WorkloadManagement/Services/JobManager``."""

    MaxParametricJobs: int = 1000
    MaxJobsPerSubmission: int = 10000
    Module: str = ""
    Enabled: bool = True


class WMSService(Service):
    system = "WorkloadManagement"

    def initialize(self) -> None:
        self.store = JobStore(self.context.engine, self.group_shares)
        self.store.new_work_listeners.append(lambda: self.context.notifier.notify(NEW_JOBS))
        self.store.create_tables()

    def group_shares(self) -> dict[str, float]:
        return {name: g.job_share for name, g in self.context.config.current.registry.groups.items()}

    def limits(self) -> JobLimits:
        snap = self.context.config.current
        sched = snap.options(JobScheduling, "Operations/Defaults/JobScheduling")
        manager = snap.options(JobManagerOptions, "Systems/WorkloadManagement/Services/JobManager")
        return JobLimits(manager.MaxParametricJobs, sched.MaxRescheduling, manager.MaxJobsPerSubmission)

    def job(self, caller: Caller, job_id: int) -> dict:
        """The job's attributes if ``caller`` may see it; ``NotAuthorized`` otherwise."""
        job = self.store.jobdb.attributes([job_id]).get(job_id)
        check_access(caller, job_id, job)
        return job

    def accessible(self, caller: Caller, job_ids: list[int]) -> tuple[list[int], dict[int, str]]:
        """Split ids into those ``caller`` may act on and refusals with their reason."""
        from vmdirac.logic.job_access import may_access

        jobs = self.store.jobdb.attributes(job_ids, ["Owner", "VO"])
        ok, refused = [], {}
        for job_id in job_ids:
            job = jobs.get(job_id)
            if job is not None and may_access(caller, job):
                ok.append(job_id)
            else:
                refused[job_id] = f"job {job_id} does not exist or is not yours"
        return ok, refused


def id_list(value: int | list[int]) -> list[int]:
    ids = [value] if isinstance(value, int) else list(value)
    from vmdirac.core.exceptions import InvalidArgument

    if not ids:
        raise InvalidArgument("no job id given")
    if any(i <= 0 for i in ids):
        raise InvalidArgument("job ids are positive integers")
    return list(dict.fromkeys(ids))
