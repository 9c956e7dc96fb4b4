"""JobLoggingDB: the ordered history of every job's status changes ("Logging info")."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, delete, insert, select
from sqlalchemy.engine import Connection

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow

metadata = MetaData()

logging_info = Table(
    "LoggingInfo", metadata,
    Column("SeqID", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("JobID", Integer, nullable=False),
    Column("Status", String(32), nullable=False),
    Column("MinorStatus", String(128), nullable=False, default=""),
    Column("ApplicationStatus", String(255), nullable=False, default=""),
    Column("StatusTime", UTCDateTime, nullable=False),
    Column("Source", String(64), nullable=False, default="Unknown"),
    Index("LoggingInfo_JobID", "JobID", "SeqID"),
)


@dataclass(frozen=True)
class LogRecord:
    job_id: int
    status: str
    minor_status: str
    application_status: str
    source: str
    time: dt.datetime | None = None

    def row(self) -> dict:
        return {"JobID": self.job_id, "Status": self.status, "MinorStatus": self.minor_status[:128],
                "ApplicationStatus": self.application_status[:255], "Source": self.source[:64],
                "StatusTime": self.time or utcnow()}


class JobLoggingDB(BaseDB):
    metadata = metadata

    @transaction
    def add(self, conn: Connection, records: list[LogRecord]) -> None:
        """Append records, in the order given (the SeqID keeps that order)."""
        if records:
            conn.execute(insert(logging_info), [r.row() for r in records])

    @transaction(write=False)
    def history(self, conn: Connection, job_id: int) -> list[dict]:
        c = logging_info.c
        rows = conn.execute(select(c.Status, c.MinorStatus, c.ApplicationStatus, c.StatusTime, c.Source)
                            .where(c.JobID == job_id).order_by(c.SeqID)).all()
        return [{"Status": r[0], "MinorStatus": r[1], "ApplicationStatus": r[2], "DateTime": r[3],
                 "Source": r[4]} for r in rows]

    @transaction
    def delete_jobs(self, conn: Connection, job_ids: list[int]) -> None:
        conn.execute(delete(logging_info).where(logging_info.c.JobID.in_(job_ids)))
