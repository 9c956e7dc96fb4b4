"""JobDB: jobs, their attributes, JDLs, parameters and pending commands.

Every status change goes through ``set_status``, which checks the transition table and writes
the logging record in the same transaction: no change without its "Logging info" line.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column, Index, Integer, MetaData, bindparam, PrimaryKeyConstraint, String, Table, Text, and_, case, delete, func,
    insert, select, tuple_, update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow
from vmdirac.core.exceptions import InvalidArgument, NotFound
from vmdirac.db.job_logging_db import LogRecord, logging_info
from vmdirac.wms.job_status import check_transition

metadata = MetaData()
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql")

jobs = Table(
    "Jobs", metadata,
    Column("JobID", Integer, primary_key=True, autoincrement=False),
    Column("JobName", String(128), nullable=False, default=""),
    Column("JobGroup", String(64), nullable=False, default=""),
    Column("JobType", String(32), nullable=False, default="User"),
    Column("Owner", String(64), nullable=False),
    Column("OwnerDN", String(255), nullable=False),
    Column("OwnerGroup", String(64), nullable=False),
    Column("VO", String(64), nullable=False),
    Column("Site", String(128), nullable=False, default="ANY"),
    Column("Status", String(32), nullable=False),
    Column("MinorStatus", String(128), nullable=False, default=""),
    Column("ApplicationStatus", String(255), nullable=False, default="Unknown"),
    Column("UserPriority", Integer, nullable=False, default=1),
    Column("CPUTime", Integer, nullable=False, default=0),
    Column("NumberOfProcessors", Integer, nullable=False, default=1),
    Column("SubmissionTime", UTCDateTime, nullable=False),
    Column("LastUpdateTime", UTCDateTime, nullable=False),
    Column("RescheduleTime", UTCDateTime),
    Column("StartExecTime", UTCDateTime),
    Column("HeartBeatTime", UTCDateTime),
    Column("EndExecTime", UTCDateTime),
    Column("RescheduleCounter", Integer, nullable=False, default=0),
    Column("MatchedBy", String(255), nullable=False, default=""),   # identity DN of the pilot
    Column("PilotReference", String(255), nullable=False, default=""),  # its instance / pilot id
    Index("Jobs_Status", "Status", "LastUpdateTime"),
    Index("Jobs_Owner", "Owner", "Status"),
    Index("Jobs_VO", "VO", "Status"),
    Index("Jobs_Site", "Site"),
    Index("Jobs_JobGroup", "JobGroup"),
    Index("Jobs_LastUpdate", "LastUpdateTime"),
    # The portal's first page (newest jobs of an owner, or of a VO for an operator): an index
    # range read backwards that stops after the page, instead of sorting all their jobs.
    Index("Jobs_Owner_JobID", "Owner", "JobID"),
    Index("Jobs_VO_JobID", "VO", "JobID"),
)

job_jdls = Table(
    "JobJDLs", metadata,
    Column("JobID", Integer, primary_key=True, autoincrement=False),
    Column("JDL", LongText, nullable=False),
    Column("OriginalJDL", LongText, nullable=False),
)

job_parameters = Table(
    "JobParameters", metadata,
    Column("JobID", Integer, nullable=False),
    Column("Name", String(100), nullable=False),
    Column("Value", Text, nullable=False),
    PrimaryKeyConstraint("JobID", "Name"),
)

job_commands = Table(
    "JobCommands", metadata,
    Column("JobID", Integer, nullable=False),
    Column("Command", String(32), nullable=False),
    Column("Arguments", String(255), nullable=False, default=""),
    Column("Status", String(16), nullable=False, default="Received"),
    Column("ReceptionTime", UTCDateTime, nullable=False),
    Column("ExecutionTime", UTCDateTime),
    PrimaryKeyConstraint("JobID", "Command"),
)

job_id_counter = Table(
    "JobIDCounter", metadata,
    Column("Name", String(16), primary_key=True),
    Column("NextID", Integer, nullable=False),
)

# The Matcher's statements (see JobDB.mark_matched); each runs once per batch of matches.
_MATCHED_LOG = insert(logging_info).values(JobID=bindparam("job"), Status="Matched", MinorStatus="Assigned",
                                           ApplicationStatus="Unknown", StatusTime=bindparam("now"), Source="Matcher")


@functools.cache
def _matched_statements(size: int) -> tuple:
    """The guarded UPDATE and the read of owner and JDL for a batch of ``size`` jobs (``_padded``),
    built and compiled once per size. Plain binds ``j0, j1..``: an expanding IN, or a statement
    built per batch, costs more Python than the rest of a match."""
    ids = [bindparam(f"j{i}", type_=Integer) for i in range(size)]

    def per_job(prefix: str) -> Any:
        return case(*[(jobs.c.JobID == ids[i], bindparam(f"{prefix}{i}", type_=String)) for i in range(size)])

    # The guard is wrapped in a function so that no index serves it: else SQLite (no
    # statistics) reads every Waiting job through Jobs_Status instead of the ids it is given.
    waiting = func.coalesce(jobs.c.Status, "") == "Waiting"
    mark = (update(jobs).where(and_(jobs.c.JobID.in_(ids), waiting))
            .values(Status="Matched", MinorStatus="Assigned", ApplicationStatus="Unknown",
                    LastUpdateTime=bindparam("now"), MatchedBy=per_job("m"), PilotReference=per_job("p"),
                    Site=func.coalesce(per_job("s"), jobs.c.Site)))   # a NULL site keeps the job's
    read = (select(jobs.c.JobID, jobs.c.Owner, jobs.c.OwnerDN, jobs.c.OwnerGroup, jobs.c.VO, job_jdls.c.JDL)
            .join_from(jobs, job_jdls, job_jdls.c.JobID == jobs.c.JobID).where(jobs.c.JobID.in_(ids)))
    return mark, read


def _padded(n: int) -> int:
    """Batch sizes rounded up to a power of two (the last job repeated): a handful of statements
    serve every size."""
    return 1 << (n - 1).bit_length()


# Attributes a caller may select, filter and sort on.
ATTRIBUTES = tuple(c.name for c in jobs.columns)
FILTERABLE = ("JobID", "Status", "MinorStatus", "ApplicationStatus", "Site", "Owner", "OwnerGroup",
              "JobGroup", "JobType", "VO", "JobName")
TIME_COLUMNS = {"SubmissionTime", "LastUpdateTime", "StartExecTime", "EndExecTime", "HeartBeatTime"}
# Final statuses that write the job's accounting record (Deleted and Completed do not: a job is
# accounted when its run ends, once).
ACCOUNTED = ("Done", "Failed", "Killed")


@dataclass(frozen=True)
class MatchedJob:
    """A job a pilot has claimed: who took it, where, and the parameters to record
    (Endpoint, Image, InstanceID)."""

    job_id: int
    matched_by: str
    pilot_reference: str
    site: str = ""                     # "" keeps the job's Site
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass
class NewJob:
    job_id: int
    attributes: dict[str, Any]
    jdl: str
    original_jdl: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobFilter:
    """A selection of jobs: attribute -> allowed values, plus a time window on a time column."""

    values: dict[str, tuple] = field(default_factory=dict)
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    time_column: str = "LastUpdateTime"

    def clause(self):
        parts = []
        for name, allowed in self.values.items():
            if name not in FILTERABLE:
                raise InvalidArgument(f"cannot select jobs by {name}; use one of {', '.join(FILTERABLE)}")
            parts.append(jobs.c[name].in_(list(allowed)))
        if self.time_column not in TIME_COLUMNS:
            raise InvalidArgument(f"{self.time_column} is not a time attribute")
        if self.since:
            parts.append(jobs.c[self.time_column] >= self.since)
        if self.until:
            parts.append(jobs.c[self.time_column] <= self.until)
        return and_(*parts) if parts else None


class JobDB(BaseDB):
    metadata = metadata

    def create_tables(self) -> None:
        super().create_tables()
        from vmdirac.db.job_logging_db import metadata as logging_metadata
        logging_metadata.create_all(self.engine)
        from vmdirac.db import accounting_db   # set_status writes the record of a job that ends
        accounting_db.create_tables(self.engine)

    @transaction
    def reserve_ids(self, conn: Connection, count: int) -> int:
        """Reserve ``count`` consecutive job ids; returns the first. Gaps after failures are fine."""
        row = conn.execute(select(job_id_counter.c.NextID).where(job_id_counter.c.Name == "Jobs")
                           .with_for_update()).first()
        if row is None:
            first = (conn.execute(select(func.max(jobs.c.JobID))).scalar() or 0) + 1
            conn.execute(insert(job_id_counter).values(Name="Jobs", NextID=first + count))
            return first
        conn.execute(update(job_id_counter).where(job_id_counter.c.Name == "Jobs")
                     .values(NextID=job_id_counter.c.NextID + count))
        return row[0]

    @transaction
    def insert_jobs(self, conn: Connection, new: list[NewJob], records: list[LogRecord]) -> None:
        """Store jobs, their JDLs, parameters and first logging records, in bulk."""
        conn.execute(insert(jobs), [{"JobID": j.job_id, **j.attributes} for j in new])
        conn.execute(insert(job_jdls), [{"JobID": j.job_id, "JDL": j.jdl, "OriginalJDL": j.original_jdl}
                                        for j in new])
        params = [{"JobID": j.job_id, "Name": k, "Value": v} for j in new for k, v in j.parameters.items()]
        if params:
            conn.execute(insert(job_parameters), params)
        if records:
            conn.execute(insert(logging_info), [r.row() for r in records])

    # ------------------------------------------------------------ reading

    @transaction(write=False)
    def attributes(self, conn: Connection, job_ids: list[int], names: list[str] | None = None) -> dict[int, dict]:
        cols = [jobs.c[n] for n in (names or ATTRIBUTES)] if names else list(jobs.c)
        if names and "JobID" not in names:
            cols.insert(0, jobs.c.JobID)
        out = {}
        for chunk in _chunks(job_ids):
            for row in conn.execute(select(*cols).where(jobs.c.JobID.in_(chunk))).mappings():
                out[row["JobID"]] = dict(row)
        return out

    @transaction(write=False)
    def jdl(self, conn: Connection, job_id: int, original: bool = False) -> str:
        col = job_jdls.c.OriginalJDL if original else job_jdls.c.JDL
        text = conn.execute(select(col).where(job_jdls.c.JobID == job_id)).scalar()
        if text is None:
            raise NotFound(f"job {job_id} does not exist", job_id=job_id)
        return text

    @transaction(write=False)
    def parameters(self, conn: Connection, job_ids: list[int], names: list[str] | None = None) -> dict[int, dict]:
        out: dict[int, dict] = {j: {} for j in job_ids}
        for chunk in _chunks(job_ids):
            q = select(job_parameters.c.JobID, job_parameters.c.Name, job_parameters.c.Value).where(
                job_parameters.c.JobID.in_(chunk))
            if names:
                q = q.where(job_parameters.c.Name.in_(names))
            for job_id, name, value in conn.execute(q):
                out[job_id][name] = value
        return out

    @transaction(write=False)
    def select(self, conn: Connection, flt: JobFilter, sort: list[tuple[str, str]] | None = None,
               start: int = 0, limit: int = 100, columns: list[str] | None = None,
               count: bool = True) -> tuple[int, list[dict]]:
        """A page of jobs and the total number selected (-1 without ``count``: callers that
        count by status anyway add those up instead of counting twice)."""
        where = flt.clause()
        count_q = select(func.count()).select_from(jobs)
        cols = [jobs.c[n] for n in columns] if columns else list(jobs.c)
        q = select(*cols)
        if where is not None:
            count_q = count_q.where(where)
            q = q.where(where)
        for name, direction in sort or [("JobID", "DESC")]:
            if name not in ATTRIBUTES:
                raise InvalidArgument(f"cannot sort by {name}")
            q = q.order_by(jobs.c[name].desc() if direction.upper() == "DESC" else jobs.c[name].asc())
        total = conn.execute(count_q).scalar_one() if count else -1
        rows = [dict(r) for r in conn.execute(q.offset(start).limit(limit)).mappings()]
        return total, rows

    @transaction(write=False)
    def ids(self, conn: Connection, flt: JobFilter, limit: int = 100000) -> list[int]:
        where = flt.clause()
        q = select(jobs.c.JobID).order_by(jobs.c.JobID).limit(limit)
        if where is not None:
            q = q.where(where)
        return list(conn.execute(q).scalars())

    @transaction(write=False)
    def counts(self, conn: Connection, attribute: str, flt: JobFilter) -> dict[str, int]:
        if attribute not in FILTERABLE or attribute == "JobID":
            raise InvalidArgument(f"cannot count jobs by {attribute}")
        q = select(jobs.c[attribute], func.count()).group_by(jobs.c[attribute])
        where = flt.clause()
        if where is not None:
            q = q.where(where)
        return {str(k): n for k, n in conn.execute(q)}

    @transaction(write=False)
    def distinct(self, conn: Connection, attribute: str, flt: JobFilter) -> list[str]:
        if attribute not in FILTERABLE or attribute == "JobID":
            raise InvalidArgument(f"no selector for {attribute}")
        q = select(jobs.c[attribute]).distinct().order_by(jobs.c[attribute]).limit(10000)
        where = flt.clause()
        if where is not None:
            q = q.where(where)
        return [str(v) for v in conn.execute(q).scalars()]

    # ------------------------------------------------------------ changing

    @transaction
    def set_status(self, conn: Connection, job_id: int, status: str | None, minor: str | None = None,
                   application: str | None = None, source: str = "Unknown",
                   attributes: dict[str, Any] | None = None, expect: tuple[str, ...] = ()) -> dict:
        """Change a job's status (checked) and write its logging record; returns the new state.

        ``expect``: the change is made only from one of these statuses (else IllegalTransition),
        which lets callers act on what they read earlier without a race.
        """
        row = conn.execute(select(jobs.c.Status, jobs.c.MinorStatus, jobs.c.ApplicationStatus)
                           .where(jobs.c.JobID == job_id).with_for_update()).first()
        if row is None:
            raise NotFound(f"job {job_id} does not exist", job_id=job_id)
        current, cur_minor, cur_app = row
        if expect and current not in expect:
            from vmdirac.core.exceptions import IllegalTransition
            raise IllegalTransition(f"job {job_id} is {current}, not {' or '.join(expect)}", job_id=job_id)
        new_status = status or current
        check_transition(job_id, current, new_status)
        now = utcnow()
        values: dict[str, Any] = {"Status": new_status, "LastUpdateTime": now, **(attributes or {})}
        if minor is not None:
            values["MinorStatus"] = minor[:128]
        if application is not None:
            values["ApplicationStatus"] = application[:255]
        conn.execute(update(jobs).where(jobs.c.JobID == job_id).values(**values))
        record = LogRecord(job_id, new_status, values.get("MinorStatus", cur_minor),
                           values.get("ApplicationStatus", cur_app), source, now)
        conn.execute(insert(logging_info).values(**record.row()))
        if new_status in ACCOUNTED and new_status != current:   # its accounting record, in this transaction
            from vmdirac.db.accounting_db import record_job
            record_job(conn, job_id)
        return {"Status": new_status, "MinorStatus": record.minor_status, "ApplicationStatus": record.application_status}

    def mark_matched(self, conn: Connection, matched: list[MatchedJob]) -> dict[int, dict]:
        """``Waiting -> Matched / Assigned`` for claimed jobs (the Matcher's hot path, inside its
        transaction), whatever their number in one guarded UPDATE, one INSERT of the logging
        records and one read of what the pilots need (owner and JDL), plus their parameters.
        Raises IllegalTransition, for all of them, if any is no longer Waiting."""
        now = utcnow()
        ids = [m.job_id for m in matched]
        size = _padded(len(matched))
        mark, read = _matched_statements(size)
        params: dict[str, Any] = {"now": now}
        for i in range(size):
            m = matched[min(i, len(matched) - 1)]
            params.update({f"j{i}": m.job_id, f"m{i}": m.matched_by, f"p{i}": m.pilot_reference,
                           f"s{i}": m.site or None})
        done = conn.execute(mark, params).rowcount
        if done != len(ids):
            from vmdirac.core.exceptions import IllegalTransition
            what = f"job {ids[0]} is" if len(ids) == 1 else f"{len(ids) - done} of jobs {ids} are"
            raise IllegalTransition(f"{what} no longer Waiting", job_id=ids[0])
        conn.execute(_MATCHED_LOG, [{"job": job_id, "now": now} for job_id in ids])
        named = [(m.job_id, name[:100], str(value)) for m in matched for name, value in m.parameters.items()]
        if named:
            conn.execute(delete(job_parameters).where(
                tuple_(job_parameters.c.JobID, job_parameters.c.Name).in_([(j, n) for j, n, _ in named])))
            conn.execute(insert(job_parameters), [{"JobID": j, "Name": n, "Value": v} for j, n, v in named])
        return {row.JobID: {"JobID": row.JobID, "JDL": row.JDL, "Owner": row.Owner, "OwnerDN": row.OwnerDN,
                            "OwnerGroup": row.OwnerGroup, "VO": row.VO}
                for row in conn.execute(read, params)}

    @transaction
    def set_attributes(self, conn: Connection, job_id: int, values: dict[str, Any]) -> None:
        conn.execute(update(jobs).where(jobs.c.JobID == job_id).values(**values))

    @transaction
    def set_parameters(self, conn: Connection, job_id: int, params: dict[str, str]) -> None:
        if not params:
            return
        conn.execute(delete(job_parameters).where(and_(job_parameters.c.JobID == job_id,
                                                       job_parameters.c.Name.in_(list(params)))))
        conn.execute(insert(job_parameters), [{"JobID": job_id, "Name": k[:100], "Value": str(v)}
                                              for k, v in params.items()])

    @transaction
    def heartbeat(self, conn: Connection, job_id: int, values: dict[str, str]) -> dict[str, str]:
        """Record a heartbeat; returns the commands waiting for the job, marking them sent."""
        now = utcnow()
        conn.execute(update(jobs).where(jobs.c.JobID == job_id).values(HeartBeatTime=now))
        self.set_parameters(job_id, values, conn=conn)
        c = job_commands.c
        pending = {cmd: args for cmd, args in conn.execute(
            select(c.Command, c.Arguments).where(and_(c.JobID == job_id, c.Status == "Received")))}
        if pending:
            conn.execute(update(job_commands).where(and_(c.JobID == job_id, c.Status == "Received"))
                         .values(Status="Sent", ExecutionTime=now))
        return pending

    @transaction
    def add_command(self, conn: Connection, job_id: int, command: str, arguments: str = "") -> None:
        c = job_commands.c
        conn.execute(delete(job_commands).where(and_(c.JobID == job_id, c.Command == command)))
        conn.execute(insert(job_commands).values(JobID=job_id, Command=command, Arguments=arguments,
                                                 Status="Received", ReceptionTime=utcnow()))

    @transaction(write=False)
    def has_command(self, conn: Connection, job_id: int, command: str) -> bool:
        c = job_commands.c
        return conn.execute(select(c.Command).where(and_(c.JobID == job_id, c.Command == command))).first() is not None

    @transaction(write=False)
    def stale(self, conn: Connection, status: str, time_column: str, before: dt.datetime,
              limit: int = 10000) -> list[int]:
        """Jobs in ``status`` whose ``time_column`` (or, unset, their last update) is before ``before``."""
        col = func.coalesce(jobs.c[time_column], jobs.c.LastUpdateTime)
        q = select(jobs.c.JobID).where(jobs.c.Status == status).where(col < before).limit(limit)
        return list(conn.execute(q).scalars())


def _chunks(ids: list[int], size: int = 1000):
    for i in range(0, len(ids), size):
        yield ids[i:i + size]
