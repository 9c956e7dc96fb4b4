"""AccountingDB: one record per finished job and per ended VM, and the grouped sums of reports.

Records are written by the DBs whose state change ends a job or a VM (``JobDB.set_status``,
``VirtualMachineDB._write``), inside that change's transaction (``record_job`` / ``record_vm``
take its connection): a job is never Done without its record, nor accounted without being Done.
A record is keyed by the job or instance id and rewritten, never added, when written again (a
retried transaction, or a Failed job rescheduled that ends again): nothing is counted twice, and
a job's record describes its last end.

What a job record holds comes from the job (owner, group, VO, site, times), from what its pilot
reported as parameters (``CPUConsumed``, ``WallClockTime``, ``Endpoint``, ``InstanceID`` from the
Matcher, ``NumberOfProcessors``) and from the sandboxes linked to it (bytes in: input sandboxes,
bytes out: output sandbox), so the pilot needs no accounting code of its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sqlalchemy import (
    BigInteger, Column, Float, Index, Integer, MetaData, String, Table, and_, cast, delete, func, insert,
    literal_column, select,
)
from sqlalchemy.engine import Connection, Engine

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow
from vmdirac.core.exceptions import InvalidArgument

metadata = MetaData()

job_records = Table(
    "ac_Jobs", metadata,
    Column("JobID", Integer, primary_key=True, autoincrement=False),
    Column("Owner", String(64), nullable=False),
    Column("OwnerGroup", String(64), nullable=False),
    Column("VO", String(64), nullable=False),
    Column("Site", String(128), nullable=False),
    Column("Endpoint", String(128), nullable=False, default=""),
    Column("InstanceID", Integer, nullable=False, default=0),    # the VM that ran it (0: none)
    Column("Status", String(32), nullable=False),                # Done, Failed, Killed
    Column("CPUTime", Float, nullable=False, default=0.0),       # seconds
    Column("WallTime", Float, nullable=False, default=0.0),      # seconds
    Column("Cores", Integer, nullable=False, default=1),
    Column("BytesIn", BigInteger, nullable=False, default=0),
    Column("BytesOut", BigInteger, nullable=False, default=0),
    Column("StartTime", UTCDateTime),                            # None: it never ran
    Column("EndTime", UTCDateTime, nullable=False),
    Index("ac_Jobs_End", "EndTime"),
    Index("ac_Jobs_VO", "VO", "EndTime"),
    Index("ac_Jobs_Instance", "InstanceID"),
)

vm_records = Table(
    "ac_VMs", metadata,
    Column("InstanceID", Integer, primary_key=True, autoincrement=False),
    Column("Pod", String(64), nullable=False),
    Column("Image", String(128), nullable=False),
    Column("Endpoint", String(128), nullable=False),
    Column("Site", String(128), nullable=False),
    Column("VO", String(64), nullable=False),
    Column("StartTime", UTCDateTime, nullable=False),            # boot accepted (else created)
    Column("EndTime", UTCDateTime, nullable=False),
    Column("WallTime", Float, nullable=False, default=0.0),      # seconds from start to end
    Column("JobsRun", Integer, nullable=False, default=0),
    Column("MeanLoad", Float, nullable=False, default=0.0),
    Column("CostPerHour", Float, nullable=False, default=0.0),
    Column("Cost", Float, nullable=False, default=0.0),
    Index("ac_VMs_End", "EndTime"),
    Index("ac_VMs_VO", "VO", "EndTime"),
    Index("ac_VMs_Start", "StartTime"),
)

# The attribute names reports group and filter by -> the column of each record type.
JOB_GROUPINGS: dict[str, str] = {"Site": "Site", "Endpoint": "Endpoint", "VO": "VO", "User": "Owner",
                                 "Status": "Status", "Group": "OwnerGroup"}
VM_GROUPINGS: dict[str, str] = {"Endpoint": "Endpoint", "Site": "Site", "VO": "VO", "Pod": "Pod", "Image": "Image"}
# The measures summed per bucket, by report name (running_vms is a time-weighted overlap instead).
_JOB_MEASURES = {
    "jobs": lambda c: func.count(),
    "cpu": lambda c: func.sum(c.CPUTime) / 3600.0,
    "wall": lambda c: func.sum(c.WallTime) / 3600.0,
}
_VM_MEASURES = {
    "vm_cost": lambda c: func.sum(c.Cost),
    "vm_jobs": lambda c: func.sum(c.JobsRun),
}
FINAL_JOB_STATUSES = ("Done", "Failed", "Killed")


@dataclass(frozen=True)
class Selection:
    """What a report reads: a time window, a bucket width and attribute -> allowed values
    (attribute names as in ``JOB_GROUPINGS``/``VM_GROUPINGS``)."""

    start: dt.datetime
    end: dt.datetime
    bucket_seconds: int
    conditions: Mapping[str, tuple[str, ...]]


def create_tables(engine: Engine) -> None:
    """The accounting tables, and the sandbox tables its job records read (for other DBs' hooks)."""
    from vmdirac.db.sandbox_metadata_db import metadata as sandbox_metadata

    metadata.create_all(engine)
    sandbox_metadata.create_all(engine)


def _float(value: Any) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0


def _int(value: Any) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0


def _upsert(conn: Connection, table: Table, key: str, row: dict[str, Any]) -> None:
    conn.execute(delete(table).where(table.c[key] == row[key]))
    conn.execute(insert(table).values(**row))


def record_job(conn: Connection, job_id: int) -> dict[str, Any]:
    """Write (or rewrite) the record of job ``job_id``, which has just reached a final status, in
    the caller's transaction; returns the record."""
    from vmdirac.db.job_db import job_parameters, jobs
    from vmdirac.db.sandbox_metadata_db import entity_mapping, job_entity, sandboxes

    job = conn.execute(select(jobs).where(jobs.c.JobID == job_id)).mappings().one()
    p = job_parameters.c
    params = dict(conn.execute(select(p.Name, p.Value).where(and_(
        p.JobID == job_id, p.Name.in_(["CPUConsumed", "WallClockTime", "Endpoint", "InstanceID",
                                       "NumberOfProcessors"])))).all())
    sizes = dict(conn.execute(
        select(entity_mapping.c.Type, func.sum(sandboxes.c.Bytes))
        .join_from(entity_mapping, sandboxes, sandboxes.c.SBId == entity_mapping.c.SBId)
        .where(entity_mapping.c.EntityId == job_entity(job_id)).group_by(entity_mapping.c.Type)).all())
    end = job["EndExecTime"] or utcnow()
    start = job["StartExecTime"]
    wall = _float(params.get("WallClockTime"))
    if not wall and start is not None:
        wall = max(0.0, (end - start).total_seconds())
    record = {
        "JobID": job_id, "Owner": job["Owner"], "OwnerGroup": job["OwnerGroup"], "VO": job["VO"],
        "Site": job["Site"], "Endpoint": str(params.get("Endpoint", ""))[:128],
        "InstanceID": _int(params.get("InstanceID")), "Status": job["Status"],
        "CPUTime": _float(params.get("CPUConsumed")), "WallTime": wall,
        "Cores": _int(params.get("NumberOfProcessors")) or job["NumberOfProcessors"],
        "BytesIn": int(sizes.get("Input") or 0), "BytesOut": int(sizes.get("Output") or 0),
        "StartTime": start, "EndTime": end,
    }
    _upsert(conn, job_records, "JobID", record)
    return record


def record_vm(conn: Connection, instance_id: int) -> dict[str, Any]:
    """Write (or rewrite) the record of instance ``instance_id``, just Halted, in the caller's
    transaction (after its row was updated); returns the record.

    Wall time runs from the accepted boot (else its creation) to the halt; the cost is that time
    at the image's ``CostPerHour`` when the VM was booted at all (a VM never booted costs nothing).
    """
    from vmdirac.db.virtual_machine_db import history, instances

    vm = conn.execute(select(instances).where(instances.c.InstanceID == instance_id)).mappings().one()
    end = vm["Halted"] or utcnow()
    start = vm["Submitted"] or vm["Created"]
    wall = max(0.0, (end - start).total_seconds())
    h = history.c
    load = conn.execute(select(func.avg(h.Load)).where(and_(
        h.InstanceID == instance_id, h.Status.in_(["Running", "Stopping"])))).scalar()
    jobs_run = conn.execute(select(func.count()).select_from(job_records)
                            .where(job_records.c.InstanceID == instance_id)).scalar_one()
    record = {
        "InstanceID": instance_id, "Pod": vm["Pod"], "Image": vm["Image"], "Endpoint": vm["Endpoint"],
        "Site": vm["Site"], "VO": vm["VO"], "StartTime": start, "EndTime": end, "WallTime": wall,
        "JobsRun": int(jobs_run), "MeanLoad": round(float(load or 0.0), 4), "CostPerHour": vm["CostPerHour"],
        "Cost": wall / 3600.0 * vm["CostPerHour"] if vm["Submitted"] else 0.0,
    }
    _upsert(conn, vm_records, "InstanceID", record)
    return record


def _epoch_seconds(column, backend: str):
    """Seconds since the epoch of a (naive UTC) datetime column, in SQL."""
    if backend == "mysql":
        return func.timestampdiff(literal_column("SECOND"), literal_column("'1970-01-01 00:00:00'"), column,
                                  type_=Integer)
    return cast(func.strftime("%s", column), Integer)


def _conditions(table: Table, names: Mapping[str, str], conditions: Mapping[str, Iterable[str]]) -> list:
    out = []
    for name, allowed in conditions.items():
        if name not in names:
            raise InvalidArgument(f"cannot select records by {name}; use {', '.join(names)}")
        out.append(table.c[names[name]].in_([str(v) for v in allowed]))
    return out


def _records(kind: str) -> tuple[Table, dict[str, str]]:
    """The table and the attribute names of a record type ("Job"; anything else: VM)."""
    return (job_records, JOB_GROUPINGS) if kind == "Job" else (vm_records, VM_GROUPINGS)


class AccountingDB(BaseDB):
    metadata = metadata

    def create_tables(self) -> None:
        create_tables(self.engine)

    # ------------------------------------------------------------ writing (server side only)

    @transaction
    def record_job(self, conn: Connection, job_id: int) -> dict[str, Any]:
        return record_job(conn, job_id)

    @transaction
    def record_vm(self, conn: Connection, instance_id: int) -> dict[str, Any]:
        return record_vm(conn, instance_id)

    @transaction
    def add_records(self, conn: Connection, job_rows: list[dict[str, Any]] = (),
                    vm_rows: list[dict[str, Any]] = ()) -> None:
        """Bulk insert of ready-made records (imports, benchmarks and tests); replaces same ids."""
        for table, key, rows in ((job_records, "JobID", job_rows), (vm_records, "InstanceID", vm_rows)):
            rows = list(rows)
            for i in range(0, len(rows), 1000):
                chunk = rows[i:i + 1000]
                conn.execute(delete(table).where(table.c[key].in_([r[key] for r in chunk])))
                conn.execute(insert(table), chunk)

    # ------------------------------------------------------------ reading

    @transaction(write=False)
    def job_record(self, conn: Connection, job_id: int) -> dict[str, Any] | None:
        row = conn.execute(select(job_records).where(job_records.c.JobID == job_id)).mappings().first()
        return dict(row) if row else None

    @transaction(write=False)
    def vm_record(self, conn: Connection, instance_id: int) -> dict[str, Any] | None:
        row = conn.execute(select(vm_records).where(vm_records.c.InstanceID == instance_id)).mappings().first()
        return dict(row) if row else None

    @transaction(write=False)
    def count(self, conn: Connection, kind: str) -> int:
        table, _names = _records(kind)
        return conn.execute(select(func.count()).select_from(table)).scalar_one()

    @transaction(write=False)
    def grouped(self, conn: Connection, report: str, grouping: str, sel: Selection) -> list[tuple[int, str, float]]:
        """``(bucket start in epoch seconds, group value, measure)`` per bucket and group of the
        records that ended in the window: GROUP BY in SQL, one indexed range scan."""
        if report in _JOB_MEASURES:
            table, names, measure = job_records, JOB_GROUPINGS, _JOB_MEASURES[report]
        elif report in _VM_MEASURES:
            table, names, measure = vm_records, VM_GROUPINGS, _VM_MEASURES[report]
        else:
            raise InvalidArgument(f"no grouped sums for report {report!r}")
        if grouping not in names:
            raise InvalidArgument(f"cannot group {report} by {grouping}; use {', '.join(names)}")
        c = table.c
        width = literal_column(str(int(sel.bucket_seconds)))   # a literal: same text in SELECT and GROUP BY
        bucket = ((_epoch_seconds(c.EndTime, self.backend) // width) * width).label("bucket")
        group = c[names[grouping]].label("grp")
        q = (select(bucket, group, measure(c).label("value"))
             .where(c.EndTime >= sel.start, c.EndTime < sel.end,
                    *_conditions(table, names, sel.conditions))
             .group_by(bucket, group).order_by(bucket, group))
        return [(int(b), str(g), float(v or 0)) for b, g, v in conn.execute(q)]

    @transaction(write=False)
    def vm_intervals(self, conn: Connection, grouping: str, sel: Selection,
                     alive: bool = True) -> list[tuple[str, dt.datetime, dt.datetime]]:
        """``(group value, start, end)`` of every VM that was up during the window: the ended ones
        from their records and, with ``alive``, the ones still up from ``vm_Instances`` (up to now)."""
        from vmdirac.db.virtual_machine_db import instances
        from vmdirac.vm.instance_status import ALIVE

        if grouping not in VM_GROUPINGS:
            raise InvalidArgument(f"cannot group VMs by {grouping}; use {', '.join(VM_GROUPINGS)}")
        c = vm_records.c
        col = VM_GROUPINGS[grouping]
        q = select(c[col], c.StartTime, c.EndTime).where(
            c.StartTime < sel.end, c.EndTime > sel.start, *_conditions(vm_records, VM_GROUPINGS, sel.conditions))
        out = [(str(g), s, e) for g, s, e in conn.execute(q)]
        now = utcnow()
        if alive and now > sel.start:   # a window wholly in the future has no VM up yet
            i = instances.c
            live = select(i[col], i.Submitted).where(
                i.Status.in_(sorted(s.value for s in ALIVE)), i.Submitted.is_not(None), i.Submitted < sel.end,
                *_conditions(instances, VM_GROUPINGS, sel.conditions))
            out += [(str(g), s, now) for g, s in conn.execute(live)]
        return out

    @transaction(write=False)
    def distinct(self, conn: Connection, kind: str, attribute: str, conditions: Mapping[str, Iterable[str]],
                 since: dt.datetime | None = None) -> list[str]:
        """Values of ``attribute`` among the records (the portal's selectors)."""
        table, names = _records(kind)
        if attribute not in names:
            raise InvalidArgument(f"{kind} records have no attribute {attribute}; use {', '.join(names)}")
        col = table.c[names[attribute]]
        q = select(col).distinct().where(*_conditions(table, names, conditions)).order_by(col).limit(1000)
        if since is not None:
            q = q.where(table.c.EndTime >= since)
        return [str(v) for v in conn.execute(q).scalars()]
