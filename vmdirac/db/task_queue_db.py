"""TaskQueueDB: waiting jobs grouped by identical requirements, and the Matcher's atomic claim.

A task queue's requirements never change once made (its key is their hash), so queues are made
in a short transaction of their own and shared by every submission with those requirements.
Multi-value requirements live in one table per kind, as in DIRAC, so that matching is one SQL
query; the claim is ``DELETE FROM tq_Jobs WHERE JobID IN (...)`` whose row count is the claim,
taken on rows read ``FOR UPDATE SKIP LOCKED`` where the server has it, so concurrent pilots (and
concurrent batches of the Matcher's group commit) spread over jobs instead of queueing on one.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass

from sqlalchemy import (
    Boolean, Column, Float, bindparam, ForeignKey, Index, Integer, MetaData, String, Table, and_, delete, exists,
    func, insert, not_, or_, select, union_all, update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from vmdirac.core.db import BaseDB, transaction
from vmdirac.core.exceptions import DBError
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
)
# In the claim's order (best priority, then oldest), so that a pick reads just the rows it
# returns: with (TQId, Priority, JobID) it sorts the whole queue, and on MySQL a pick
# ``FOR UPDATE`` then locks every job of the queue, and concurrent pickers skip all of them.
# (A database made before keeps its old index: correct, only slower; recreate it to gain this.)
Index("tq_Jobs_TQ", tq_jobs.c.TQId, tq_jobs.c.Priority.desc(), tq_jobs.c.JobID)


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


CANDIDATE_TTL = 1.0  # seconds a resource description's candidate queues are reused

# The claim's statements are built and compiled once per size, sizes being rounded up to a power
# of two (``_padded``), with plain binds ``t0, n0, j0..``: an expanding IN, or a statement built
# per batch, costs more Python than the database's work.

def _padded(n: int) -> int:
    return 1 << (n - 1).bit_length()


@functools.cache
def _pick_statement(size: int, lock: bool):
    """``(TQId, JobID)`` of the best ``n<i>`` jobs of queue ``t<i>``, for ``i < size``, in one
    statement (``n<i> = 0`` pads). ``lock``: each part ``FOR UPDATE SKIP LOCKED`` (MySQL)."""
    def part(i: int):
        q = (select(tq_jobs.c.TQId, tq_jobs.c.JobID).where(tq_jobs.c.TQId == bindparam(f"t{i}", type_=Integer))
             .order_by(tq_jobs.c.Priority.desc(), tq_jobs.c.JobID).limit(bindparam(f"n{i}", type_=Integer)))
        return q.with_for_update(skip_locked=True) if lock else q

    if size == 1:
        return part(0)
    if lock:    # MySQL/MariaDB: ``(SELECT .. LIMIT n FOR UPDATE SKIP LOCKED) UNION ALL (..)``
        return union_all(*[part(i) for i in range(size)])
    # SQLite takes no LIMIT in a member of a compound SELECT: each is a subquery.
    return union_all(*[select(sub.c.TQId, sub.c.JobID) for sub in (part(i).subquery() for i in range(size))])


@functools.cache
def _claim_statement(size: int):
    """``DELETE`` of jobs ``j<i>``, ``i < size`` (the last id repeated pads)."""
    return delete(tq_jobs).where(tq_jobs.c.JobID.in_([bindparam(f"j{i}", type_=Integer) for i in range(size)]))


def _shape(res: ResourceDescription) -> tuple:
    """Which parts of the matching rule apply: statements are built once per shape."""
    return (bool(res.cpu_time), bool(res.vo), bool(res.owner), bool(res.owner_group), bool(res.site),
            bool(res.job_types), len(res.required_tags))


def _cache_key(res: ResourceDescription) -> tuple:
    return (res.cpu_time, res.vo, res.owner, res.owner_group, res.site, res.platform, res.job_types,
            res.tags, res.cores, res.max_ram_mb, res.required_tags)


def _params(res: ResourceDescription, shape: tuple) -> dict:
    params = {"cpu": res.cpu_time, "vo": res.vo, "owner": res.owner, "group": res.owner_group,
              "site": res.site, "platform": res.platform, "job_types": list(res.job_types),
              "tags": sorted(res.all_tags()) or [""]}
    params.update({f"req{i}": tag for i, tag in enumerate(res.required_tags)})
    return params


@functools.lru_cache(maxsize=256)
def _matching_clause(shape: tuple):
    """DIRAC's matching rule as SQL, with bind parameters (see ``_params``)."""
    has_cpu, has_vo, has_owner, has_group, has_site, has_job_types, n_required = shape
    tq = task_queues.c
    parts = [tq.Enabled.is_(True), exists().where(tq_jobs.c.TQId == tq.TQId)]
    if has_cpu:
        parts.append(tq.CPUTime <= bindparam("cpu"))
    if has_vo:
        parts.append(tq.VO == bindparam("vo"))
    if has_owner:
        parts.append(tq.Owner == bindparam("owner"))
    if has_group:
        parts.append(tq.OwnerGroup == bindparam("group"))

    def has_any(table) -> object:
        return exists().where(table.c.TQId == tq.TQId)

    def has(table, param: str) -> object:
        return exists().where(and_(table.c.TQId == tq.TQId, table.c.Value == bindparam(param)))

    parts.append(or_(not_(has_any(sites)), has(sites, "site")))
    if has_site:
        parts.append(not_(has(banned_sites, "site")))
    parts.append(or_(not_(has_any(platforms)), has(platforms, "platform")))
    if has_job_types:
        parts.append(or_(not_(has_any(job_types)), exists().where(
            and_(job_types.c.TQId == tq.TQId, job_types.c.Value.in_(bindparam("job_types", expanding=True))))))
    # Every tag the queue needs, the resource has ...
    parts.append(not_(exists().where(and_(tags.c.TQId == tq.TQId,
                                          tags.c.Value.not_in(bindparam("tags", expanding=True))))))
    # ... and every tag the resource requires, the queue has.
    for i in range(n_required):
        parts.append(has(tags, f"req{i}"))
    return and_(*parts)


@functools.lru_cache(maxsize=256)
def _candidates_statement(shape: tuple):
    return select(task_queues.c.TQId, task_queues.c.Priority).where(_matching_clause(shape))


@dataclass(frozen=True)
class Claim:
    job_id: int
    tq_id: int


@dataclass(frozen=True)
class WaitingWork:
    """``waiting``: queue id -> (waiting jobs, the queue's CPU time); ``matches``: for each
    resource asked about, in order, the ids of the queues it could run."""

    waiting: dict[int, tuple[int, int]]
    matches: list[frozenset[int]]

    def of(self, tq_ids: set[int] | frozenset[int]) -> tuple[int, float]:
        """Waiting jobs and their total CPU seconds in these queues."""
        jobs = cpu = 0
        for tq_id in tq_ids:
            n, cpu_time = self.waiting.get(tq_id, (0, 0))
            jobs += n
            cpu += n * cpu_time
        return jobs, float(cpu)


class TaskQueueDB(BaseDB):
    metadata = metadata

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self._cache: dict[tuple, tuple[float, list[list]]] = {}

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
        return _matching_clause(_shape(res))

    def _candidates(self, conn: Connection, res: ResourceDescription, fresh: bool = False) -> list[list]:
        """``[tq_id, priority]`` of the queues ``res`` could take a job from.

        Kept for ``CANDIDATE_TTL`` seconds per resource description: a pilot's next request
        skips the matching query. It is only a hint (a queue emptied meanwhile is dropped when
        its pick finds nothing), never what decides a claim, so processes need not share it.
        """
        key = _cache_key(res)
        now = time.monotonic()
        hit = None if fresh else self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        shape = _shape(res)
        rows = conn.execute(_candidates_statement(shape), _params(res, shape)).all()
        found = [[r[0], r[1]] for r in rows]
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (now + CANDIDATE_TTL, found)
        return found

    def _forget(self, res: ResourceDescription, tq_id: int) -> None:
        key = _cache_key(res)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache[key] = (hit[0], [c for c in hit[1] if c[0] != tq_id])

    def clear_cache(self) -> None:
        """New work arrived: the next requests look again."""
        self._cache = {}

    @transaction(write=False)
    def matching_queues(self, conn: Connection, res: ResourceDescription) -> dict[int, dict]:
        """The queues this resource could run, with their requirements and waiting job counts."""
        tq = task_queues.c
        counts = (select(tq_jobs.c.TQId, func.count().label("Jobs")).group_by(tq_jobs.c.TQId).subquery())
        shape = _shape(res)
        rows = conn.execute(
            select(tq.TQId, tq.Owner, tq.OwnerGroup, tq.VO, tq.CPUTime, tq.Priority, counts.c.Jobs)
            .join_from(task_queues, counts, counts.c.TQId == tq.TQId)
            .where(_matching_clause(shape)), _params(res, shape)).all()
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

    @transaction(write=False)
    def waiting_work(self, conn: Connection, resources: list[ResourceDescription]) -> WaitingWork:
        """What the VM Scheduler needs in one read: the waiting jobs of every queue (one
        GROUP BY) and, for each resource, the ids of the queues it could run (one light query
        each, identical descriptions asked once). Cheaper than ``matching_queues`` per resource,
        which also reads every queue's requirements."""
        tq = task_queues.c
        counts = conn.execute(
            select(tq_jobs.c.TQId, func.count(), tq.CPUTime)
            .join_from(tq_jobs, task_queues, tq.TQId == tq_jobs.c.TQId)
            .where(tq.Enabled.is_(True)).group_by(tq_jobs.c.TQId, tq.CPUTime)).all()
        waiting = {r[0]: (int(r[1]), int(r[2])) for r in counts}
        matches: list[frozenset[int]] = []
        seen: dict[tuple, frozenset[int]] = {}
        for res in resources:
            key = _cache_key(res)
            if key not in seen:
                if not waiting:
                    seen[key] = frozenset()
                else:
                    shape = _shape(res)
                    rows = conn.execute(_candidates_statement(shape), _params(res, shape)).all()
                    seen[key] = frozenset(r[0] for r in rows)
            matches.append(seen[key])
        return WaitingWork(waiting, matches)

    def claim(self, conn: Connection, res: ResourceDescription, attempts: int = 8) -> Claim | None:
        """Take one job for this resource inside the caller's transaction, or None."""
        return self.claim_many(conn, [res], attempts)[0]

    def claim_many(self, conn: Connection, resources: list[ResourceDescription],
                   attempts: int = 8) -> list[Claim | None]:
        """Take one job for each resource (a different one each) inside the caller's
        transaction; None where nothing fits.

        For each resource a queue is drawn at random weighted by priority (DIRAC's rule); the
        resources that drew the same queue get its best jobs. One statement reads them for all
        the queues drawn (on MySQL ``FOR UPDATE SKIP LOCKED``: concurrent transactions take
        different jobs instead of queueing on one), then one ``DELETE`` of all of them: its row
        count is the claim. The rows were locked by the read (MySQL) or the transaction holds
        SQLite's write lock, so a shortfall means something broke: the transaction is refused.
        A resource whose queue ran dry draws again, ``attempts`` times at most.
        """
        lock = self.engine.dialect.name == "mysql"
        claims: list[Claim | None] = [None] * len(resources)
        # Per resource: our copy of its candidates (the cached list is shared), refreshed yet?
        state: dict[int, tuple[list[list], bool]] = {i: (list(self._candidates(conn, res)), False)
                                                     for i, res in enumerate(resources)}
        todo = list(range(len(resources)))
        for _ in range(attempts):
            drawn: dict[int, list[int]] = {}        # queue -> the resources that drew it
            for i in todo:
                candidates, refreshed = state[i]
                if not candidates and not refreshed:
                    candidates = self._candidates(conn, resources[i], fresh=True)
                    state[i] = (candidates, True)
                if candidates:
                    tq_id = random.choices(candidates, [max(p, 1e-6) for _, p in candidates])[0][0]
                    drawn.setdefault(tq_id, []).append(i)
            if not drawn:
                break
            picked: dict[int, list[int]] = {tq_id: [] for tq_id in drawn}
            for tq_id, job_id in self._pick(conn, {tq_id: len(who) for tq_id, who in drawn.items()}, lock):
                picked[tq_id].append(job_id)
            todo, taken = [], []
            for tq_id, who in drawn.items():
                job_ids = picked[tq_id]
                for i, job_id in zip(who, job_ids):
                    claims[i] = Claim(job_id, tq_id)
                    taken.append(job_id)
                for i in who[len(job_ids):]:  # emptied (or all its jobs being claimed) meanwhile
                    candidates, refreshed = state[i]
                    state[i] = ([c for c in candidates if c[0] != tq_id], refreshed)
                    self._forget(resources[i], tq_id)
                    todo.append(i)
            if taken and (n := self._delete(conn, taken)) != len(taken):
                raise DBError(f"claim of {len(taken)} jobs removed {n} task queue rows; nothing claimed")
            if not todo:
                break
        return claims

    @staticmethod
    def _pick(conn: Connection, wanted: dict[int, int], lock: bool) -> list[tuple[int, int]]:
        """``(TQId, JobID)`` of the best ``n`` jobs of each queue in ``{TQId: n}``."""
        size = _padded(len(wanted))
        params: dict[str, int] = {}
        for i, (tq_id, n) in enumerate(wanted.items()):
            params[f"t{i}"], params[f"n{i}"] = tq_id, n
        for i in range(len(wanted), size):
            params[f"t{i}"], params[f"n{i}"] = 0, 0
        return [(r[0], r[1]) for r in conn.execute(_pick_statement(size, lock), params)]

    @staticmethod
    def _delete(conn: Connection, job_ids: list[int]) -> int:
        size = _padded(len(job_ids))
        return conn.execute(_claim_statement(size),
                            {f"j{i}": job_ids[min(i, len(job_ids) - 1)] for i in range(size)}).rowcount

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
