"""Jobs across JobDB, JobLoggingDB, TaskQueueDB and SandboxMetadataDB: submit, check, kill,
delete, reschedule. Every action is one transaction, so nothing is ever half-done.

The invariant kept here: a job has a row in ``tq_Jobs`` exactly while it is Waiting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy.engine import Connection, Engine

from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import IllegalTransition, InvalidJDL, NotFound, QuotaExceeded, VMDiracError
from vmdirac.core.export import Caller
from vmdirac.db.job_db import JobDB, NewJob
from vmdirac.db.job_logging_db import JobLoggingDB, LogRecord
from vmdirac.db.sandbox_metadata_db import SandboxMetadataDB
from vmdirac.db.task_queue_db import TaskQueueDB
from vmdirac.wms import jdl as J
from vmdirac.wms import job_description as D
from vmdirac.wms.job_status import ACTIVE, FINAL, JobStatus as S, MinorStatus as M
from vmdirac.wms.matching import CPU_SEGMENTS, JobRequirements

log = logging.getLogger(__name__)

MAX_CORES = 1024


@dataclass(frozen=True)
class JobLimits:
    max_parametric: int = 1000
    max_rescheduling: int = 3
    max_jobs_per_submission: int = 10000


@dataclass
class Prepared:
    """A checked job ready to store: its description, requirements and sandboxes."""

    attrs: dict[str, Any]
    desc: D.JobDescription
    requirements: JobRequirements
    input_sandboxes: list[str]


def _bulk_result(successful: list[int], failed: dict[int, str]) -> dict:
    return {"Successful": successful, "Failed": {str(k): v for k, v in failed.items()}}


class JobStore:
    def __init__(self, engine: Engine, group_shares: Callable[[], dict[str, float]]) -> None:
        self.jobdb = JobDB(engine)
        self.logdb = JobLoggingDB(engine)
        self.tqdb = TaskQueueDB(engine)
        self.sbdb = SandboxMetadataDB(engine)
        self.group_shares = group_shares
        self.new_work_listeners: list[Callable[[], None]] = []

    def create_tables(self) -> None:
        for db in (self.jobdb, self.logdb, self.tqdb, self.sbdb):
            db.create_tables()

    # ------------------------------------------------------------ submission

    def prepare(self, caller: Caller, jdl_texts: list[str], limits: JobLimits) -> list[tuple[Prepared, str]]:
        """Parse, expand and check every job; raise on the first bad one (nothing stored yet)."""
        out: list[tuple[Prepared, str]] = []
        for n, text in enumerate(jdl_texts, 1):
            where = f"job {n}: " if len(jdl_texts) > 1 else ""
            try:
                attrs = J.parse(text)
                expanded = D.expand_parametric(attrs, limits.max_parametric)
            except (InvalidJDL, QuotaExceeded) as e:
                raise type(e)(where + e.message) from e
            for one in expanded:
                try:
                    out.append((self._check(caller, one), text))
                except InvalidJDL as e:
                    raise InvalidJDL(where + e.message) from e
            if len(out) > limits.max_jobs_per_submission:
                raise QuotaExceeded(f"a submission may make at most {limits.max_jobs_per_submission} jobs")
        return out

    def _check(self, caller: Caller, attrs: dict[str, Any]) -> Prepared:
        desc = D.JobDescription.from_attrs(attrs)
        if desc.cpu_time > CPU_SEGMENTS[-1]:
            raise InvalidJDL(f"CPUTime {desc.cpu_time} is over the maximum of {CPU_SEGMENTS[-1]} s")
        if desc.number_of_processors > MAX_CORES:
            raise InvalidJDL(f"NumberOfProcessors {desc.number_of_processors} is over {MAX_CORES}")
        sandboxes = []
        for entry in desc.input_sandbox:
            if entry.startswith("SB:"):
                sandboxes.append(entry)
            elif entry.upper().startswith("LFN:"):
                raise InvalidJDL(f"InputSandbox {entry}: LFNs need a file catalogue, which this "
                                 "installation does not have")
            else:
                raise InvalidJDL(f"InputSandbox file {entry} was not uploaded: submit with "
                                 "dirac-wms-job-submit, which uploads local files")
        req = JobRequirements.make(
            owner=caller.username, owner_group=caller.group, vo=caller.vo, cpu_time=desc.cpu_time,
            sites=desc.site, banned_sites=desc.banned_sites, platforms=desc.platform,
            job_type=desc.job_type, tags=desc.tags, cores=desc.number_of_processors, max_ram_mb=desc.max_ram)
        return Prepared(attrs, desc, req, sandboxes)

    def submit(self, caller: Caller, jdl_texts: list[str], limits: JobLimits) -> list[int]:
        """Store the jobs Waiting in their task queues, all or none; returns their ids."""
        prepared = self.prepare(caller, jdl_texts, limits)
        if not prepared:
            raise InvalidJDL("nothing to submit")
        distinct = {p.requirements.key: p.requirements for p, _ in prepared}
        queues = {key: self.tqdb.queue_for(req) for key, req in distinct.items()}
        first = self.jobdb.reserve_ids(len(prepared))
        now = utcnow()
        new, records, tq_entries, links = [], [], [], []
        for offset, (p, original) in enumerate(prepared):
            job_id = first + offset
            attrs = D.substitute_job_id(p.attrs, job_id)
            attrs.update({"JobID": job_id, "Owner": caller.username, "OwnerDN": caller.dn,
                          "OwnerGroup": caller.group, "VirtualOrganization": caller.vo})
            d = p.desc
            site = d.site[0] if len(d.site) == 1 else ("Multiple" if d.site else "ANY")
            new.append(NewJob(job_id, {
                "JobName": (d.job_name or "")[:128], "JobGroup": (d.job_group or "")[:64],
                "JobType": d.job_type[:32], "Owner": caller.username, "OwnerDN": caller.dn,
                "OwnerGroup": caller.group, "VO": caller.vo, "Site": site[:128],
                "Status": S.WAITING, "MinorStatus": M.PILOT_AGENT_SUBMISSION, "ApplicationStatus": "Unknown",
                "UserPriority": d.priority, "CPUTime": d.cpu_time, "NumberOfProcessors": d.number_of_processors,
                "SubmissionTime": now, "LastUpdateTime": now,
            }, J.dumps(attrs), original))
            records += _checking_records(job_id, now, first_record=(S.RECEIVED, M.JOB_ACCEPTED, "JobManager"))
            tq_entries.append((queues[p.requirements.key], job_id, d.priority))
            if p.input_sandboxes:
                links.append((p.input_sandboxes, job_id))

        def store(conn: Connection) -> None:
            self.jobdb.insert_jobs(new, records, conn=conn)
            self.tqdb.insert_jobs(tq_entries, conn=conn)
            for sb_ids, job_id in links:
                self.sbdb.assign_to_job(sb_ids, job_id, "Input", caller.username, caller.group, conn=conn)

        self.jobdb.run(store)
        self._after_new_work({caller.group})
        ids = [j.job_id for j in new]
        log.info("%s submitted %d job(s): %d..%d", caller, len(ids), ids[0], ids[-1])
        return ids

    def _after_new_work(self, groups: set[str]) -> None:
        try:
            self.tqdb.recalculate_priorities(self.group_shares(), sorted(groups))
        except VMDiracError:
            log.exception("task queue priorities not recalculated; the next change will")
        for listener in self.new_work_listeners:
            listener()

    # ------------------------------------------------------------ actions on existing jobs

    def kill(self, caller: Caller, job_ids: list[int], source: str = "JobManager") -> dict:
        ok, failed = [], {}
        for job_id in job_ids:
            try:
                self.jobdb.run(lambda conn, j=job_id: self._kill_one(conn, j, source))
                ok.append(job_id)
            except VMDiracError as e:
                failed[job_id] = e.message
        return _bulk_result(ok, failed)

    def _kill_one(self, conn: Connection, job_id: int, source: str) -> None:
        status = self._status(conn, job_id)
        if status in FINAL:
            raise IllegalTransition(f"job {job_id} is {status}: nothing to kill", job_id=job_id)
        if status in ACTIVE:
            # The pilot kills the payload at its next heartbeat and reports Killed.
            self.jobdb.add_command(job_id, "Kill", "", conn=conn)
            self.jobdb.set_status(job_id, None, M.MARKED_FOR_TERMINATION, source=source, conn=conn)
            return
        self.tqdb.remove_jobs([job_id], conn=conn)
        self.jobdb.set_status(job_id, S.KILLED, M.KILLED_BY_USER, source=source,
                              attributes={"EndExecTime": utcnow()}, conn=conn)

    def delete(self, caller: Caller, job_ids: list[int]) -> dict:
        ok, failed = [], {}
        for job_id in job_ids:
            try:
                self.jobdb.run(lambda conn, j=job_id: self._delete_one(conn, j))
                ok.append(job_id)
            except VMDiracError as e:
                failed[job_id] = e.message
        return _bulk_result(ok, failed)

    def _delete_one(self, conn: Connection, job_id: int) -> None:
        status = self._status(conn, job_id)
        if status in ACTIVE:
            raise IllegalTransition(f"job {job_id} is {status}: kill it before deleting it", job_id=job_id)
        self.tqdb.remove_jobs([job_id], conn=conn)
        self.jobdb.set_status(job_id, S.DELETED, "Deleted by user", source="JobManager", conn=conn)
        self.sbdb.unassign_jobs([job_id], conn=conn)

    def reschedule(self, caller: Caller | None, job_ids: list[int], limits: JobLimits,
                   source: str = "JobManager", minor: str = M.RESCHEDULED) -> dict:
        ok, failed = [], {}
        groups = set()
        for job_id in job_ids:
            try:
                job = self.jobdb.attributes([job_id]).get(job_id)
                if job is None:
                    raise NotFound(f"job {job_id} does not exist", job_id=job_id)
                # The queue first, in its own transaction: queues are shared and outlive us.
                prepared = self._check_again(job, J.parse(self.jobdb.jdl(job_id)))
                tq_id = self.tqdb.queue_for(prepared.requirements)
                groups.add(self.jobdb.run(
                    lambda conn, j=job_id: self._reschedule_one(conn, j, tq_id, limits, source, minor)))
                ok.append(job_id)
            except VMDiracError as e:
                failed[job_id] = e.message
        if ok:
            self._after_new_work(groups)
        return _bulk_result(ok, failed)

    def _reschedule_one(self, conn: Connection, job_id: int, tq_id: int, limits: JobLimits, source: str,
                        minor: str) -> str:
        job = self.jobdb.attributes([job_id], conn=conn)[job_id]
        if job["RescheduleCounter"] >= limits.max_rescheduling:
            if job["Status"] in ACTIVE:
                self.jobdb.set_status(job_id, S.FAILED, M.MAX_RESCHEDULING, source=source, conn=conn)
                return job["OwnerGroup"]
            raise IllegalTransition(f"job {job_id} was rescheduled {job['RescheduleCounter']} times "
                                    f"already, the maximum", job_id=job_id)
        if job["Status"] in ACTIVE:
            self.jobdb.add_command(job_id, "Kill", "rescheduled", conn=conn)
        now = utcnow()
        self.tqdb.remove_jobs([job_id], conn=conn)
        self.jobdb.set_status(job_id, S.RESCHEDULED, minor, source=source, attributes={
            "RescheduleCounter": job["RescheduleCounter"] + 1, "RescheduleTime": now, "MatchedBy": "",
            "PilotReference": "", "StartExecTime": None, "EndExecTime": None, "HeartBeatTime": None,
        }, conn=conn)
        for status, m, src in ((S.RECEIVED, M.JOB_ACCEPTED, source), (S.CHECKING, M.JOB_SANITY, "JobSanity"),
                               (S.CHECKING, M.JOB_SCHEDULING, "JobScheduling"),
                               (S.WAITING, M.PILOT_AGENT_SUBMISSION, "JobScheduling")):
            self.jobdb.set_status(job_id, status, m, application="Unknown" if status == S.RECEIVED else None,
                                  source=src, conn=conn)
        self.tqdb.insert_jobs([(tq_id, job_id, job["UserPriority"])], conn=conn)
        return job["OwnerGroup"]

    def _check_again(self, job: dict, attrs: dict) -> Prepared:
        owner = Caller(dn=job["OwnerDN"], username=job["Owner"], group=job["OwnerGroup"], vo=job["VO"],
                       registered=True)
        return self._check(owner, attrs)

    def _status(self, conn: Connection, job_id: int) -> str:
        job = self.jobdb.attributes([job_id], ["Status"], conn=conn).get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist", job_id=job_id)
        return job["Status"]


def _checking_records(job_id: int, now, first_record: tuple[str, str, str]) -> list[LogRecord]:
    """The logging records of a job going through checking into its task queue."""
    status, minor, source = first_record
    return [
        LogRecord(job_id, status, minor, "Unknown", source, now),
        LogRecord(job_id, S.CHECKING, M.JOB_SANITY, "Unknown", "JobSanity", now),
        LogRecord(job_id, S.CHECKING, M.JOB_SCHEDULING, "Unknown", "JobScheduling", now),
        LogRecord(job_id, S.WAITING, M.PILOT_AGENT_SUBMISSION, "Unknown", "JobScheduling", now),
    ]
