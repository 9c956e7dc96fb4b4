"""ConfigDB: every committed version of the configuration tree, newest wins."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, func, insert, select
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow
from vmdirac.core.exceptions import Conflict, NotFound

metadata = MetaData()

config_versions = Table(
    "ConfigVersions",
    metadata,
    Column("Version", Integer, primary_key=True, autoincrement=False),
    Column("Data", Text().with_variant(mysql.MEDIUMTEXT(), "mysql"), nullable=False),
    Column("Author", String(255), nullable=False),
    Column("Comment", String(1024), nullable=False, default=""),
    Column("CommitTime", UTCDateTime, nullable=False),
    # "file:<sha256>" when imported from the server's YAML files at start, "" for commits.
    Column("Origin", String(80), nullable=False, default=""),
)


@dataclass(frozen=True)
class VersionInfo:
    version: int
    author: str
    comment: str
    commit_time: object
    origin: str

    def to_wire(self) -> dict:
        return {"Version": self.version, "Author": self.author, "Comment": self.comment,
                "CommitTime": self.commit_time, "Origin": self.origin}


class ConfigDB(BaseDB):
    metadata = metadata

    @transaction(write=False)
    def newer_than(self, conn: Connection, version: int) -> tuple[int, str] | None:
        """The newest (version, YAML) if it is newer than ``version``."""
        newest = conn.execute(select(func.max(config_versions.c.Version))).scalar()
        if newest is None or newest <= version:
            return None
        data = conn.execute(select(config_versions.c.Data).where(config_versions.c.Version == newest)).scalar_one()
        return newest, data

    @transaction(write=False)
    def current_version(self, conn: Connection) -> int:
        return conn.execute(select(func.max(config_versions.c.Version))).scalar() or 0

    @transaction
    def commit(self, conn: Connection, data: str, based_on: int, author: str, comment: str = "",
               origin: str = "") -> int:
        """Store ``data`` as the version after ``based_on``; ``Conflict`` if that is not the newest."""
        newest = conn.execute(select(func.max(config_versions.c.Version))).scalar() or 0
        if newest != based_on:
            raise Conflict(f"the configuration is at version {newest}, not {based_on}: "
                           "fetch the new version and apply your change to it", version=newest)
        try:
            conn.execute(insert(config_versions).values(
                Version=newest + 1, Data=data, Author=author[:255], Comment=comment[:1024],
                CommitTime=utcnow(), Origin=origin))
        except IntegrityError as e:
            raise Conflict(f"another commit made version {newest + 1} meanwhile; fetch it and retry") from e
        return newest + 1

    @transaction
    def import_file(self, conn: Connection, data: str, digest: str, author: str) -> int | None:
        """Store the server's file tree as a new version unless that same file was the last import."""
        origin = f"file:{digest}"
        last_file = conn.execute(
            select(config_versions.c.Origin)
            .where(config_versions.c.Origin.like("file:%"))
            .order_by(config_versions.c.Version.desc()).limit(1)
        ).scalar()
        if last_file == origin:
            return None
        newest = conn.execute(select(func.max(config_versions.c.Version))).scalar() or 0
        try:
            conn.execute(insert(config_versions).values(
                Version=newest + 1, Data=data, Author=author, Comment="imported from the server's files",
                CommitTime=utcnow(), Origin=origin))
        except IntegrityError:
            return None  # another server process imported at the same moment
        return newest + 1

    @transaction(write=False)
    def history(self, conn: Connection, limit: int = 100) -> list[VersionInfo]:
        c = config_versions.c
        rows = conn.execute(
            select(c.Version, c.Author, c.Comment, c.CommitTime, c.Origin).order_by(c.Version.desc()).limit(limit)
        ).all()
        return [VersionInfo(*row) for row in rows]

    @transaction(write=False)
    def contents(self, conn: Connection, version: int) -> str:
        data = conn.execute(
            select(config_versions.c.Data).where(config_versions.c.Version == version)).scalar()
        if data is None:
            raise NotFound(f"no configuration version {version}", version=version)
        return data
