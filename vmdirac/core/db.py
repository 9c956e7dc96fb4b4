"""SQLAlchemy engines from a URL, and the base class of every DB module.

Transaction rules, for every subclass:
- A method decorated with ``@transaction`` runs in one transaction on its own connection
  (the decorator passes it as ``conn``): it commits when the method returns and rolls back when
  it raises. Nothing is half-written.
- Deadlocks and lock-wait timeouts (MySQL), "database is locked" (SQLite) and a connection lost
  before the commit are retried a bounded number of times, re-running the whole method: so a
  transactional method must not have side effects outside the DB.
- ``@transaction(write=False)`` marks a read: on SQLite it does not take the write lock.
- To make several DB methods one transaction, pass the connection on: ``db.method(..., conn=conn)``
  runs inside the caller's transaction (no new transaction, no retry of its own). Services use
  ``BaseDB.run(fn)`` to run ``fn(conn)`` as one retried transaction across DB modules.
- DB classes talk to SQLAlchemy only; they never import services or clients.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and write transactions start
with ``BEGIN IMMEDIATE`` so two writers queue instead of failing on a lock upgrade.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.types import TypeDecorator

from vmdirac.core.exceptions import ConfigurationError, DBError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
IDLE_PING_SECONDS = 30.0   # MySQL: a pooled connection idle this long is pinged before use
_RETRY_MYSQL = {1213, 1205, 2006, 2013}  # deadlock, lock wait timeout, server gone, lost connection
_SAVEPOINT_GONE = 1305


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC (both backends), always handed back UTC-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the DB; use UTC-aware datetimes")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        return value.replace(tzinfo=dt.timezone.utc) if value is not None else None


def utcnow() -> dt.datetime:
    """Now, UTC, to the second (what both backends store and DIRAC shows)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as e:  # sqlalchemy raises ArgumentError with the URL in it; keep ours short
        raise ConfigurationError("the database URL is not valid") from e
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"timeout": 30, "check_same_thread": False, "isolation_level": None},
            pool_size=20,
            max_overflow=20,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection):
            write = conn.get_execution_options().get("vmdirac_write", True)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if backend == "mysql":
        query = dict(parsed.query)
        query.setdefault("charset", "utf8mb4")
        engine = create_engine(
            parsed.set(query=query),
            pool_recycle=3600,
            pool_size=20,
            max_overflow=40,
            isolation_level="READ COMMITTED",
            # Every transaction ends in a commit or a rollback (``transaction``): the pool's own
            # rollback at check-in would be one more round trip per transaction, for nothing.
            pool_reset_on_return=None,
        )

        # A connection is pinged only when it has been idle long enough for the server to have
        # dropped it; SQLAlchemy's pre-ping would cost a round trip on every checkout. A
        # connection lost anyway is retried by ``transaction``.
        @event.listens_for(engine, "checkin")
        def _checked_in(_dbapi_conn, record):
            record.info["vmdirac_idle_since"] = time.monotonic()

        @event.listens_for(engine, "checkout")
        def _ping_if_idle(dbapi_conn, record, _proxy):
            since = record.info.get("vmdirac_idle_since")
            if since is not None and time.monotonic() - since > IDLE_PING_SECONDS:
                try:
                    dbapi_conn.ping(reconnect=False)
                except Exception as e:
                    raise DisconnectionError(f"idle connection lost: {e}") from e

        return engine
    raise ConfigurationError(f"unsupported database backend {backend!r} (use sqlite or mysql+pymysql)")


def _retryable(err: BaseException | None) -> bool:
    if not isinstance(err, DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    orig = err.orig
    code = orig.args[0] if getattr(orig, "args", None) else None
    if isinstance(code, int) and code in _RETRY_MYSQL:
        return True
    if isinstance(code, int) and code == _SAVEPOINT_GONE:
        # A deadlock inside a SAVEPOINT ends the whole transaction on MySQL; the rollback to the
        # savepoint then fails with this, and the deadlock is only in its context chain.
        cause, depth = err.__context__, 0
        while cause is not None and depth < 8:
            if isinstance(cause, DBAPIError) and cause is not err and _retryable(cause):
                return True
            cause, depth = cause.__context__, depth + 1
        return False
    return isinstance(err, OperationalError) and "database is locked" in str(orig)


F = TypeVar("F", bound=Callable[..., Any])


def transaction(fn: F | None = None, *, write: bool = True) -> Any:
    """Run a ``BaseDB`` method in one retried transaction; see the module docstring."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def runner(self: BaseDB, *args: Any, conn: Connection | None = None, **kwargs: Any) -> Any:
            if conn is not None:
                return method(self, conn, *args, **kwargs)
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    with self.engine.connect().execution_options(vmdirac_write=write) as conn:
                        with conn.begin():
                            return method(self, conn, *args, **kwargs)
                except DBAPIError as e:
                    if attempt == MAX_ATTEMPTS or not _retryable(e):
                        raise DBError(f"{type(self).__name__}.{method.__name__}: database error "
                                      f"({type(e.orig).__name__}: {e.orig})") from e
                    log.warning("%s.%s: retrying after %s (attempt %d)",
                                type(self).__name__, method.__name__, e.orig, attempt)
                    time.sleep(random.uniform(0.01, 0.05) * attempt)
            raise AssertionError("unreachable")

        return runner  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


class BaseDB:
    """A DB module: its tables in ``metadata``, its logic in ``@transaction`` methods."""

    metadata: MetaData

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def create_tables(self) -> None:
        self.metadata.create_all(self.engine)

    @transaction
    def run(self, conn: Connection, fn: Callable[[Connection], Any]) -> Any:
        """``fn(conn)`` as one retried transaction (for work spanning several DB modules)."""
        return fn(conn)
