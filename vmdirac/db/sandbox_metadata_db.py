"""SandboxMetadataDB: which sandboxes exist, whose they are, and which jobs use them.

A sandbox is known to users by DIRAC's id ``SB:<SEName>|<SEPFN>``; inside, a row of
``sb_SandBoxes`` (with an integer ``SBId``) and links in ``sb_EntityMapping`` (``Job:<id>``,
``Input``/``Output``). The file itself is the service's business: the two methods that must stay
in step with it (``register``, ``delete_unused``) take a callback that does the file operation
while the row is locked, so an upload of the same content and a clean-up never interleave.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

from sqlalchemy import (
    BigInteger, Boolean, Column, ForeignKey, Index, Integer, MetaData, PrimaryKeyConstraint, String,
    Table, UniqueConstraint, and_, delete, exists, insert, select, update,
)
from sqlalchemy.engine import Connection, Row

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow
from vmdirac.core.exceptions import InvalidArgument, NotAuthorized, NotFound

SandboxType = Literal["Input", "Output"]
SANDBOX_TYPES: tuple[str, ...] = ("Input", "Output")
_CHUNK = 500  # ids per IN (...) clause

metadata = MetaData()

# Indexed VARCHARs stay <= 255 characters: utf8mb4 on MySQL counts 4 bytes each.
sandboxes = Table(
    "sb_SandBoxes", metadata,
    Column("SBId", Integer, primary_key=True, autoincrement=True),
    Column("Owner", String(64), nullable=False),
    Column("OwnerGroup", String(64), nullable=False),
    Column("VO", String(64), nullable=False),
    Column("SEName", String(64), nullable=False),
    Column("SEPFN", String(255), nullable=False),
    Column("Bytes", BigInteger, nullable=False),
    Column("Checksum", String(64), nullable=False),        # sha256, hex
    Column("RegistrationTime", UTCDateTime, nullable=False),
    Column("LastAccessTime", UTCDateTime, nullable=False),
    Column("Assigned", Boolean, nullable=False, default=False),
    UniqueConstraint("SEName", "SEPFN", name="sb_SandBoxes_Location"),
    Index("sb_SandBoxes_Owner", "Owner", "OwnerGroup"),
    Index("sb_SandBoxes_Unused", "Assigned", "LastAccessTime"),
)
_REGISTER_IF_NEW = (insert(sandboxes).prefix_with("IGNORE", dialect="mysql")
                    .prefix_with("OR IGNORE", dialect="sqlite"))

entity_mapping = Table(
    "sb_EntityMapping", metadata,
    Column("SBId", Integer, ForeignKey("sb_SandBoxes.SBId"), nullable=False),
    Column("EntityId", String(128), nullable=False),       # "Job:<id>"
    Column("Type", String(64), nullable=False),            # "Input" | "Output"
    PrimaryKeyConstraint("SBId", "EntityId", "Type"),
    Index("sb_EntityMapping_Entity", "EntityId"),
)


def sandbox_id(se_name: str, pfn: str) -> str:
    return f"SB:{se_name}|{pfn}"


def parse_sandbox_id(sb_id: str) -> tuple[str, str]:
    """``(SEName, SEPFN)`` of ``SB:<SEName>|<SEPFN>``; ``InvalidArgument`` for anything else."""
    se_name, bar, pfn = sb_id[3:].partition("|") if sb_id.startswith("SB:") else ("", "", "")
    if not bar or not se_name or not pfn or len(se_name) > 64 or len(pfn) > 255:
        shown = sb_id if len(sb_id) <= 120 else sb_id[:120] + "..."
        raise InvalidArgument(f"{shown!r} is not a sandbox id (SB:<SEName>|<path>)", sb_id=shown)
    return se_name, pfn


def job_entity(job_id: int) -> str:
    return f"Job:{job_id}"


@dataclass(frozen=True)
class SandboxInfo:
    row_id: int
    sb_id: str
    owner: str
    group: str
    vo: str
    se_name: str
    pfn: str
    size: int
    checksum: str
    registered: dt.datetime
    last_access: dt.datetime
    assigned: bool

    def to_wire(self) -> dict:
        return {"SBId": self.sb_id, "Owner": self.owner, "OwnerGroup": self.group, "VO": self.vo,
                "Bytes": self.size, "Checksum": self.checksum, "RegistrationTime": self.registered,
                "LastAccessTime": self.last_access, "Assigned": self.assigned}


@dataclass(frozen=True)
class UnusedSandbox:
    """A sandbox no job links to: never assigned, or assigned to jobs since deleted."""

    row_id: int
    sb_id: str
    assigned: bool
    last_access: dt.datetime
    size: int


def _info(row: Row) -> SandboxInfo:
    return SandboxInfo(row.SBId, sandbox_id(row.SEName, row.SEPFN), row.Owner, row.OwnerGroup, row.VO,
                       row.SEName, row.SEPFN, row.Bytes, row.Checksum, row.RegistrationTime,
                       row.LastAccessTime, bool(row.Assigned))


def by_type(links: Iterable[tuple[SandboxInfo, str]]) -> dict[str, list[str]]:
    """``{"Input": [ids], "Output": [ids]}`` from ``(sandbox, type)`` pairs."""
    out: dict[str, list[str]] = {kind: [] for kind in SANDBOX_TYPES}
    for info, kind in links:
        out.setdefault(kind, []).append(info.sb_id)
    return out


def _chunks(items: list, size: int = _CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _has_links(row_id_column) -> object:
    return exists().where(entity_mapping.c.SBId == row_id_column)


class SandboxMetadataDB(BaseDB):
    metadata = metadata

    # ------------------------------------------------------------ sandboxes

    @transaction
    def register(self, conn: Connection, owner: str, group: str, vo: str, se_name: str, pfn: str,
                 size: int, checksum: str, place: Callable[[], None] | None = None) -> SandboxInfo:
        """Record an uploaded sandbox, or refresh the row of the same content already there.

        ``place()`` (moving the file into place) runs after the row is locked and before the
        commit: a clean-up of the same row waits for it, or has finished before it starts. A
        refreshed sandbox that no job uses counts as never assigned again, so the grace period of
        unassigned sandboxes protects it until its new job is submitted.
        """
        now = utcnow()
        c = sandboxes.c
        where = and_(c.SEName == se_name, c.SEPFN == pfn)
        # Insert-if-absent, then lock the row: concurrent uploads of the same content meet on the
        # one row. (No savepoint: a MySQL deadlock inside one ends the whole transaction and the
        # rollback to the savepoint then fails with an error that is not retried.)
        conn.execute(_REGISTER_IF_NEW.values(
            Owner=owner, OwnerGroup=group, VO=vo, SEName=se_name, SEPFN=pfn, Bytes=size, Checksum=checksum,
            RegistrationTime=now, LastAccessTime=now, Assigned=False))
        row_id = conn.execute(select(c.SBId).where(where).with_for_update()).scalar_one()
        in_use = conn.execute(select(_has_links(row_id))).scalar()
        conn.execute(update(sandboxes).where(c.SBId == row_id).values(LastAccessTime=now, Assigned=bool(in_use)))
        if place is not None:
            place()
        return _info(conn.execute(select(sandboxes).where(c.SBId == row_id)).one())

    @transaction(write=False)
    def get(self, conn: Connection, sb_id: str) -> SandboxInfo:
        se_name, pfn = parse_sandbox_id(sb_id)
        row = conn.execute(select(sandboxes).where(
            sandboxes.c.SEName == se_name, sandboxes.c.SEPFN == pfn)).first()
        if row is None:
            raise NotFound(f"sandbox {sb_id} does not exist", sb_id=sb_id)
        return _info(row)

    @transaction
    def touch(self, conn: Connection, row_id: int) -> None:
        """Note an access (a download): the clean-up counts its grace from the last access."""
        conn.execute(update(sandboxes).where(sandboxes.c.SBId == row_id).values(LastAccessTime=utcnow()))

    # ------------------------------------------------------------ links to jobs

    @transaction
    def assign_to_job(self, conn: Connection, sb_ids: list[str], job_id: int, kind: SandboxType,
                      owner: str, group: str) -> int:
        """Link every sandbox of ``sb_ids`` to job ``job_id`` as its ``kind`` sandbox.

        All or nothing: ``NotFound`` / ``NotAuthorized`` naming the first id that does not exist
        or is not ``owner``'s in ``group``. Links that exist already are kept; returns how many
        were added. Call with ``conn=`` to make it part of the job's own transaction.
        """
        if kind not in SANDBOX_TYPES:
            raise InvalidArgument(f"sandbox type {kind!r} is not one of {', '.join(SANDBOX_TYPES)}")
        wanted = {sb_id: parse_sandbox_id(sb_id) for sb_id in dict.fromkeys(sb_ids)}
        if not wanted:
            return 0
        c = sandboxes.c
        found: dict[tuple[str, str], Row] = {}
        for chunk in _chunks(sorted({pfn for _, pfn in wanted.values()})):
            # Locking the rows keeps a clean-up from deleting a sandbox while it gets its job.
            for row in conn.execute(select(c.SBId, c.SEName, c.SEPFN, c.Owner, c.OwnerGroup)
                                    .where(c.SEPFN.in_(chunk)).order_by(c.SBId).with_for_update()):
                found[(row.SEName, row.SEPFN)] = row
        row_ids = []
        for sb_id, key in wanted.items():
            row = found.get(key)
            if row is None:
                raise NotFound(f"sandbox {sb_id} does not exist", sb_id=sb_id, job_id=job_id)
            if (row.Owner, row.OwnerGroup) != (owner, group):
                raise NotAuthorized(f"sandbox {sb_id} does not belong to {owner}@{group}",
                                    sb_id=sb_id, job_id=job_id)
            row_ids.append(row.SBId)
        entity = job_entity(job_id)
        m = entity_mapping.c
        linked = set(conn.execute(select(m.SBId).where(
            m.EntityId == entity, m.Type == kind, m.SBId.in_(row_ids))).scalars())
        new = [{"SBId": r, "EntityId": entity, "Type": kind} for r in row_ids if r not in linked]
        if new:
            conn.execute(insert(entity_mapping), new)
        conn.execute(update(sandboxes).where(c.SBId.in_(row_ids)).values(Assigned=True))
        return len(new)

    @transaction(write=False)
    def get_sandboxes_assigned_to_entity(self, conn: Connection, entity_id: str) -> list[tuple[SandboxInfo, str]]:
        """``(sandbox, type)`` of every sandbox linked to ``entity_id`` (e.g. ``Job:42``)."""
        rows = conn.execute(
            select(sandboxes, entity_mapping.c.Type)
            .join(entity_mapping, entity_mapping.c.SBId == sandboxes.c.SBId)
            .where(entity_mapping.c.EntityId == entity_id)
            .order_by(entity_mapping.c.Type, sandboxes.c.SBId)
        ).all()
        return [(_info(row), row.Type) for row in rows]

    @transaction(write=False)
    def job_ids_of(self, conn: Connection, row_id: int, kind: str = "Input") -> list[int]:
        """The jobs a sandbox is linked to as ``kind``."""
        c = entity_mapping.c
        rows = conn.execute(select(c.EntityId).where(c.SBId == row_id, c.Type == kind)).scalars()
        return [int(e[4:]) for e in rows if e.startswith("Job:") and e[4:].isdigit()]

    def get_job_sandboxes(self, job_id: int, conn: Connection | None = None) -> dict[str, list[str]]:
        """``{"Input": [ids], "Output": [ids]}`` of job ``job_id``."""
        return by_type(self.get_sandboxes_assigned_to_entity(job_entity(job_id), conn=conn))

    @transaction
    def unassign_entities(self, conn: Connection, entity_ids: list[str], vo: str | None = None) -> int:
        """Drop every link of these entities (their sandboxes become unused unless another job
        has them); with ``vo``, only links to that VO's sandboxes. Returns the links dropped."""
        m = entity_mapping.c
        dropped = 0
        for chunk in _chunks(sorted(set(entity_ids))):
            stmt = delete(entity_mapping).where(m.EntityId.in_(chunk))
            if vo is not None:
                stmt = stmt.where(m.SBId.in_(select(sandboxes.c.SBId).where(sandboxes.c.VO == vo)))
            dropped += conn.execute(stmt).rowcount
        return dropped

    def unassign_jobs(self, job_ids: list[int], vo: str | None = None, conn: Connection | None = None) -> int:
        """``unassign_entities`` for jobs: used when jobs are deleted."""
        return self.unassign_entities([job_entity(j) for j in job_ids], vo, conn=conn)

    # ------------------------------------------------------------ clean-up

    @transaction(write=False)
    def unused_sandboxes(self, conn: Connection, last_access_before: dt.datetime, limit: int) -> list[UnusedSandbox]:
        """Sandboxes no job links to, last accessed before ``last_access_before``, oldest first."""
        c = sandboxes.c
        rows = conn.execute(
            select(c.SBId, c.SEName, c.SEPFN, c.Assigned, c.LastAccessTime, c.Bytes)
            .where(c.LastAccessTime < last_access_before, ~_has_links(c.SBId))
            .order_by(c.LastAccessTime, c.SBId).limit(limit)
        ).all()
        return [UnusedSandbox(r.SBId, sandbox_id(r.SEName, r.SEPFN), bool(r.Assigned), r.LastAccessTime, r.Bytes)
                for r in rows]

    @transaction
    def delete_unused(self, conn: Connection, row_ids: list[int], unassigned_before: dt.datetime,
                      assigned_before: dt.datetime, remove: Callable[[SandboxInfo], bool]) -> list[SandboxInfo]:
        """Delete those of ``row_ids`` that are still unused and past their grace; returns them.

        The rows are locked first and checked again (an upload of the same content or a new job
        may have taken one meanwhile); ``remove(sandbox)`` deletes each file while its row is
        locked, and only the rows whose file is gone (``True``) are deleted, at the commit. A
        crash after a file went leaves its row, still unused: the next clean-up deletes it.
        """
        c = sandboxes.c
        ids = sorted(set(row_ids))
        if not ids:
            return []
        locked = conn.execute(select(sandboxes).where(c.SBId.in_(ids)).order_by(c.SBId).with_for_update()).all()
        # Asked separately, after the locks: a new link needs the row lock we now hold.
        in_use = set(conn.execute(select(entity_mapping.c.SBId).where(entity_mapping.c.SBId.in_(ids))).scalars())
        removed = []
        for row in locked:
            cutoff = assigned_before if row.Assigned else unassigned_before
            if row.SBId in in_use or row.LastAccessTime >= cutoff:
                continue
            info = _info(row)
            if remove(info):
                removed.append(info)
        if removed:
            conn.execute(delete(sandboxes).where(c.SBId.in_([i.row_id for i in removed])))
        return removed
