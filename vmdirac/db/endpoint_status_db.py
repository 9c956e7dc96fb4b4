"""How each cloud endpoint has been answering the VM Scheduler: failures in a row, the last
error, and until when the endpoint is backed off (``vm_EndpointStatus``, in the VM database).

The scheduler keeps its back-off in memory to decide; it writes it here so that operators see
why a pod gets no VMs (``dirac-vm-pods``, the portal), whichever process they ask.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.engine import Connection

from vmdirac.core.db import BaseDB, UTCDateTime, transaction, utcnow

metadata = MetaData()

endpoint_status = Table(
    "vm_EndpointStatus", metadata,
    Column("Endpoint", String(128), primary_key=True),        # "<Site>/<Endpoint>"
    Column("Failures", Integer, nullable=False, default=0),   # in a row; 0 once a boot succeeds
    Column("LastError", String(1024), nullable=False, default=""),
    Column("LastErrorTime", UTCDateTime, nullable=True),
    Column("BackedOffUntil", UTCDateTime, nullable=True),
    Column("LastSuccess", UTCDateTime, nullable=True),
)


@dataclass(frozen=True)
class EndpointState:
    endpoint: str
    failures: int
    last_error: str
    last_error_time: dt.datetime | None
    backed_off_until: dt.datetime | None
    last_success: dt.datetime | None

    def backed_off(self, now: dt.datetime | None = None) -> bool:
        return self.backed_off_until is not None and self.backed_off_until > (now or utcnow())

    def to_wire(self) -> dict[str, Any]:
        return {"Endpoint": self.endpoint, "Failures": self.failures, "LastError": self.last_error,
                "LastErrorTime": self.last_error_time, "BackedOffUntil": self.backed_off_until,
                "LastSuccess": self.last_success}


class EndpointStatusDB(BaseDB):
    metadata = metadata

    def _upsert(self, conn: Connection, endpoint: str, values: dict[str, Any]) -> None:
        # Insert-if-absent, then update: no savepoint (a MySQL deadlock inside one ends the
        # transaction, and the rollback to it then fails with an error that is not retried).
        conn.execute(insert(endpoint_status).prefix_with("IGNORE", dialect="mysql")
                     .prefix_with("OR IGNORE", dialect="sqlite").values(Endpoint=endpoint))
        conn.execute(update(endpoint_status).where(endpoint_status.c.Endpoint == endpoint).values(**values))

    @transaction
    def failed(self, conn: Connection, endpoint: str, reason: str, backed_off_seconds: float) -> None:
        now = utcnow()
        self._upsert(conn, endpoint, {
            "Failures": endpoint_status.c.Failures + 1, "LastError": reason[:1024], "LastErrorTime": now,
            "BackedOffUntil": now + dt.timedelta(seconds=backed_off_seconds)})

    @transaction
    def succeeded(self, conn: Connection, endpoint: str) -> None:
        """The endpoint booted a VM: no longer failing (its last error stays, with its time)."""
        self._upsert(conn, endpoint, {"Failures": 0, "BackedOffUntil": None, "LastSuccess": utcnow()})

    @transaction(write=False)
    def states(self, conn: Connection) -> dict[str, EndpointState]:
        return {r.Endpoint: EndpointState(r.Endpoint, r.Failures, r.LastError, r.LastErrorTime, r.BackedOffUntil,
                                          r.LastSuccess)
                for r in conn.execute(select(endpoint_status))}
