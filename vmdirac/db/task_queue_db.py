"""TaskQueueDB: waiting jobs grouped by identical requirements, and the Matcher's atomic claim.

A task queue's requirements never change once made (its key is their hash), so queues are made
in a short transaction of their own and shared by every submission with those requirements.
Multi-value requirements live in one table per kind, as in DIRAC, so that matching is one SQL
query; the claim is ``DELETE FROM tq_Jobs WHERE JobID = ?`` whose row count is the claim, taken
on a row read ``FOR UPDATE SKIP LOCKED`` where the server has it, so concurrent pilots spread
over jobs instead of queueing on one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import (
    Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, and_, delete, exists,
    func, insert, not_, or_, select, update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from vmdirac.core.db import BaseDB, transaction
from vmdirac.wms.matching import JobRequirements, ResourceDescription
from vmdirac.wms.priorities import QueueLoad, tq_priorities

metadata = MetaData()

task_queues = Table(
    "tq_TaskQueues", metadata,
    Column("TQId", Integer, primary_key=True, autoincrement=True),
    Column("ReqKey", String(64), nullable=False, unique=True),
    Column("Owner", String(64), nullable=False),
    Column("OwnerGroup", String(64), nullable=False),
    Column("VO", String(64), nullable=False),
    Column("CPUTime", Integer, nullable=False),
    Column("Priority", Float, nullable=False, default=1.0),
    Column("Enabled", Boolean, nullable=False, default=True),
    Index("tq_Owner", "OwnerGroup", "Owner"),
    Index("tq_VO", "VO", "CPUTime"),
)

tq_jobs = Table(
    "tq_Jobs", metadata,
    Column("TQId", Integer, ForeignKey("tq_TaskQueues.TQId", ondelete="CASCADE"), nullable=False),
    Column("JobID", Integer, primary_key=True, autoincrement=False),
    Column("Priority", Integer, nullable=False),
    Index("tq_Jobs_TQ", "TQId", "Priority", "JobID"),
)


def _multi(name: str) -> Table:
    return Table(
        name, metadata,
        Column("TQId", Integer, ForeignKey("tq_TaskQueues.TQId", ondelete="CASCADE"), nullable=False),
        Column("Value", String(128), nullable=False),
        Index(f"{name}_TQ", "TQId", "Value", unique=True),
        Index(f"{name}_Value", "Value"),
    )


sites, banned_sites, platforms, job_types, tags = (
    _multi("tq_TQToSites"), _multi("tq_TQToBannedSites"), _multi("tq_TQToPlatforms"),
    _multi("tq_TQToJobTypes"), _multi("tq_TQToTags"))
_MULTI = {"sites": sites, "banned_sites": banned_sites, "platforms": platforms, "job_types": job_types,
          "tags": tags}


@dataclass(frozen=True)
class Claim:
    job_id: int
    tq_id: int


class TaskQueueDB(BaseDB):
    metadata = metadata

    @transaction
    def _find_or_create(self, conn: Connection, req: JobRequirements) -> int:
        key = req.key
        found = conn.execute(select(task_queues.c.TQId).where(task_queues.c.ReqKey == key)).scalar()
        if found is not None:
            return found
        tq_id = conn.execute(insert(task_queues).values(
            ReqKey=key, Owner=req.owner, OwnerGroup=req.owner_group, VO=req.vo, CPUTime=req.cpu_time,
            Priority=1.0, Enabled=True)).inserted_primary_key[0]
        for attr, table in _MULTI.items():
            values = getattr(req, attr)
            if values:
                conn.execute(insert(table), [{"TQId": tq_id, "Value": v} for v in values])
        return tq_id

    def queue_for(self, req: JobRequirements) -> int:
        """The id of the queue with these requirements, made if needed (its own transaction)."""
        try:
            return self._find_or_create(req)
        except Exception as e:  # a concurrent submission made it first: read it
            if not isinstance(getattr(e, "__cause__", None), IntegrityError):
                raise
            return self._find_or_create(req)

    @transaction
    def insert_jobs(self, conn: Connection, entries: list[tuple[int, int, int]]) -> None:
        """``(tq_id, job_id, user_priority)`` for each job becoming Waiting."""
        if entries:
            conn.execute(insert(tq_jobs), [{"TQId": t, "JobID": j, "Priority": p} for t, j, p in entries])

    @transaction
    def remove_jobs(self, conn: Connection, job_ids: list[int]) -> int:
        return conn.execute(delete(tq_jobs).where(tq_jobs.c.JobID.in_(job_ids))).rowcount

    @transaction
    def recalculate_priorities(self, conn: Connection, group_shares: dict[str, float],
                               groups: list[str] | None = None) -> None:
        """DIRAC's shares: recompute the priority of the queues of ``groups`` (all if None)."""
        q = (select(task_queues.c.TQId, task_queues.c.Owner, task_queues.c.OwnerGroup,
                    func.coalesce(func.sum(tq_jobs.c.Priority), 0))
             .select_from(task_queues.outerjoin(tq_jobs, tq_jobs.c.TQId == task_queues.c.TQId))
             .group_by(task_queues.c.TQId, task_queues.c.Owner, task_queues.c.OwnerGroup))
        if groups:
            q = q.where(task_queues.c.OwnerGroup.in_(groups))
        loads = [QueueLoad(r[0], r[1], r[2], float(r[3])) for r in conn.execute(q)]
        prios = tq_priorities(loads, group_shares)
        for load in loads:
            new = prios.get(load.tq_id, 0.0)
            conn.execute(update(task_queues).where(task_queues.c.TQId == load.tq_id).values(Priority=new))

    # ------------------------------------------------------------ matching

    def _matching_clause(self, res: ResourceDescription):
        tq = task_queues.c
        parts = [tq.Enabled.is_(True), exists().where(tq_jobs.c.TQId == tq.TQId)]
        if res.cpu_time:
            parts.append(tq.CPUTime <= res.cpu_time)
        if res.vo:
            parts.append(tq.VO == res.vo)
        if res.owner:
            parts.append(tq.Owner == res.owner)
        if res.owner_group:
            parts.append(tq.OwnerGroup == res.owner_group)

        def has_any(table) -> object:
            return exists().where(table.c.TQId == tq.TQId)

        def has(table, value) -> object:
            return exists().where(and_(table.c.TQId == tq.TQId, table.c.Value == value))

        parts.append(or_(not_(has_any(sites)), has(sites, res.site)))
        if res.site:
            parts.append(not_(has(banned_sites, res.site)))
        parts.append(or_(not_(has_any(platforms)), has(platforms, res.platform)))
        if res.job_types:
            parts.append(or_(not_(has_any(job_types)), exists().where(
                and_(job_types.c.TQId == tq.TQId, job_types.c.Value.in_(list(res.job_types))))))
        # Every tag the queue needs, the resource has ...
        parts.append(not_(exists().where(and_(tags.c.TQId == tq.TQId,
                                              tags.c.Value.not_in(sorted(res.all_tags()) or [""])))))
        # ... and every tag the resource requires, the queue has.
        for required in res.required_tags:
            parts.append(has(tags, required))
        return and_(*parts)

    @transaction(write=False)
    def matching_queues(self, conn: Connection, res: ResourceDescription) -> dict[int, dict]:
        """The queues this resource could run, with their requirements and waiting job counts."""
        tq = task_queues.c
        counts = (select(tq_jobs.c.TQId, func.count().label("Jobs")).group_by(tq_jobs.c.TQId).subquery())
        rows = conn.execute(
            select(tq.TQId, tq.Owner, tq.OwnerGroup, tq.VO, tq.CPUTime, tq.Priority, counts.c.Jobs)
            .join_from(task_queues, counts, counts.c.TQId == tq.TQId)
            .where(self._matching_clause(res))).all()
        out = {r[0]: {"Owner": r[1], "OwnerGroup": r[2], "VO": r[3], "CPUTime": r[4], "Priority": r[5],
                      "Jobs": r[6]} for r in rows}
        if out:
            for name, table in _MULTI.items():
                key = {"sites": "Sites", "banned_sites": "BannedSites", "platforms": "Platforms",
                       "job_types": "JobTypes", "tags": "Tags"}[name]
                for d in out.values():
                    d[key] = []
                for tq_id, value in conn.execute(select(table.c.TQId, table.c.Value)
                                                 .where(table.c.TQId.in_(list(out)))):
                    out[tq_id][key].append(value)
        return out

    def claim(self, conn: Connection, res: ResourceDescription, attempts: int = 5) -> Claim | None:
        """Take one job for this resource inside the caller's transaction, or None.

        A queue is drawn at random weighted by priority (DIRAC's rule), then its best job.
        """
        tq = task_queues.c
        candidates = conn.execute(select(tq.TQId, tq.Priority).where(self._matching_clause(res))).all()
        if not candidates:
            return None
        skip_locked = self.engine.dialect.name == "mysql"
        for _ in range(attempts):
            if not candidates:
                return None
            weights = [max(p, 1e-6) for _, p in candidates]
            idx = random.choices(range(len(candidates)), weights)[0]
            tq_id = candidates[idx][0]
            q = (select(tq_jobs.c.JobID).where(tq_jobs.c.TQId == tq_id)
                 .order_by(tq_jobs.c.Priority.desc(), tq_jobs.c.JobID).limit(1))
            if skip_locked:
                q = q.with_for_update(skip_locked=True)
            job_id = conn.execute(q).scalar()
            if job_id is None:
                candidates.pop(idx)  # emptied (or all its jobs being claimed) meanwhile
                continue
            if conn.execute(delete(tq_jobs).where(tq_jobs.c.JobID == job_id)).rowcount == 1:
                return Claim(job_id, tq_id)
        return None

    @transaction
    def delete_empty_queues(self, conn: Connection) -> int:
        tq = task_queues.c
        empty = select(tq.TQId).where(not_(exists().where(tq_jobs.c.TQId == tq.TQId)))
        ids = list(conn.execute(empty).scalars())
        if not ids:
            return 0
        for table in _MULTI.values():
            conn.execute(delete(table).where(table.c.TQId.in_(ids)))
        return conn.execute(delete(task_queues).where(and_(tq.TQId.in_(ids), not_(
            exists().where(tq_jobs.c.TQId == tq.TQId))))).rowcount

    @transaction(write=False)
    def queue_of(self, conn: Connection, job_ids: list[int]) -> dict[int, int]:
        return {j: t for j, t in conn.execute(select(tq_jobs.c.JobID, tq_jobs.c.TQId)
                                              .where(tq_jobs.c.JobID.in_(job_ids)))}
