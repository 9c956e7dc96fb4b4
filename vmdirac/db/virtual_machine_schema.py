"""VirtualMachineDB's tables (``vm_Images``, ``vm_RunningPods``, ``vm_Instances``, ``vm_History``,
``vm_Deployment``) and the typed records that cross layers: an instance, a heartbeat, a history
row, a plot bucket, and a selection of instances. The rules are in ``virtual_machine_db``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import (
    BigInteger, Boolean, Column, Float, Index, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text, and_,
)

from vmdirac.core.db import UTCDateTime
from vmdirac.core.exceptions import InvalidArgument
from vmdirac.vm.instance_status import ALIVE, InstanceStatus as I

metadata = MetaData()
_BigID = BigInteger().with_variant(Integer, "sqlite")   # SQLite autoincrements INTEGER keys only

images = Table(
    "vm_Images", metadata,
    Column("Name", String(128), nullable=False),
    Column("Endpoint", String(128), nullable=False),          # "<Site>/<Endpoint>"
    Column("ImageID", String(255), nullable=False, default=""),
    Column("Flavor", String(128), nullable=False, default=""),
    Column("Cores", Integer, nullable=False, default=1),
    Column("RAM", Integer, nullable=False, default=0),
    Column("CostPerHour", Float, nullable=False, default=0.0),
    Column("LastUpdate", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("Name", "Endpoint"),
)

running_pods = Table(
    "vm_RunningPods", metadata,
    Column("Name", String(64), primary_key=True),
    Column("Image", String(128), nullable=False),
    Column("VO", String(64), nullable=False),
    Column("PilotGroup", String(64), nullable=False),
    Column("Endpoints", Text, nullable=False),                 # comma-separated "<Site>/<Endpoint>"
    Column("Policy", String(16), nullable=False),
    Column("StopPolicy", String(16), nullable=False),
    Column("MaxInstances", Integer, nullable=False),
    Column("MaxBootsPerCycle", Integer, nullable=False),
    Column("StaticInstances", Integer, nullable=False),
    Column("CPUPerInstance", Float, nullable=False),
    Column("Enabled", Boolean, nullable=False),
    Column("LastUpdate", UTCDateTime, nullable=False),
)

instances = Table(
    "vm_Instances", metadata,
    Column("InstanceID", Integer, primary_key=True, autoincrement=True),
    Column("Name", String(128), nullable=False, unique=True),
    Column("Pod", String(64), nullable=False),
    Column("VO", String(64), nullable=False, default=""),
    Column("Image", String(128), nullable=False),
    Column("Endpoint", String(128), nullable=False),
    Column("Site", String(128), nullable=False),
    Column("EndpointVMID", String(255), nullable=False, default=""),
    Column("Status", String(32), nullable=False),
    Column("PublicIP", String(255), nullable=False, default=""),
    Column("PrivateIP", String(255), nullable=False, default=""),
    Column("Load", Float, nullable=False, default=0.0),
    Column("Jobs", Integer, nullable=False, default=0),       # jobs running at the last heartbeat
    Column("TransferredFiles", BigInteger, nullable=False, default=0),
    Column("TransferredBytes", BigInteger, nullable=False, default=0),
    Column("Uptime", Float, nullable=False, default=0.0),     # seconds, as the VM reports it
    Column("CostPerHour", Float, nullable=False, default=0.0),
    Column("Cost", Float, nullable=False, default=0.0),
    Column("PendingCommand", String(8), nullable=False, default=""),
    Column("ForceStop", Boolean, nullable=False, default=False),
    Column("ErrorMessage", String(1024), nullable=False, default=""),
    Column("Created", UTCDateTime, nullable=False),
    Column("Submitted", UTCDateTime),
    Column("Started", UTCDateTime),
    Column("Halted", UTCDateTime),
    Column("LastUpdate", UTCDateTime, nullable=False),
    Column("CredentialExpiry", UTCDateTime),
    Index("vm_Instances_Status", "Status", "LastUpdate"),
    Index("vm_Instances_Pod", "Pod", "Status"),
    Index("vm_Instances_Endpoint", "Endpoint", "Status"),
    Index("vm_Instances_EndpointVMID", "EndpointVMID"),
    Index("vm_Instances_VO", "VO", "Status"),
)

history = Table(
    "vm_History", metadata,
    Column("HistoryID", _BigID, primary_key=True, autoincrement=True),
    Column("InstanceID", Integer, nullable=False),
    Column("Time", UTCDateTime, nullable=False),
    Column("Status", String(32), nullable=False),
    Column("Load", Float, nullable=False, default=0.0),
    Column("Jobs", Integer, nullable=False, default=0),
    Column("TransferredFiles", BigInteger, nullable=False, default=0),
    Column("TransferredBytes", BigInteger, nullable=False, default=0),
    Column("Reason", String(255), nullable=False, default=""),
    Index("vm_History_Instance", "InstanceID", "HistoryID"),
    Index("vm_History_Time", "Time"),
)

# One row: this installation's id, the deployment tag every VM it boots carries.
deployment = Table(
    "vm_Deployment", metadata,
    Column("Name", String(32), primary_key=True),
    Column("DeploymentID", String(64), nullable=False),
    Column("Created", UTCDateTime, nullable=False),
)

ATTRIBUTES = tuple(c.name for c in instances.columns)
FILTERABLE = ("InstanceID", "Name", "Pod", "VO", "Image", "Endpoint", "Site", "Status", "EndpointVMID",
              "PendingCommand")
GROUPABLE = ("Pod", "VO", "Image", "Endpoint", "Site", "Status")
COMMANDS = ("", "stop", "halt")
# States in which the cloud bills the VM: from the accepted boot until it is gone.
BILLED = ALIVE - {I.NEW}

def instance_name(pod: str, instance_id: int) -> str:
    """``<pod>-<id>``, made DNS-label safe; unique because the id, the last part, is."""
    prefix = re.sub(r"[^a-z0-9-]+", "-", pod.lower()).strip("-")[:40] or "vm"
    return f"{prefix}-{instance_id}"


@dataclass(frozen=True)
class Instance:
    """One ``vm_Instances`` row."""

    instance_id: int
    name: str
    pod: str
    vo: str
    image: str
    endpoint: str
    site: str
    endpoint_vm_id: str
    status: str
    public_ip: str
    private_ip: str
    load: float
    jobs: int
    transferred_files: int
    transferred_bytes: int
    uptime: float
    cost_per_hour: float
    cost: float
    pending_command: str
    force_stop: bool
    error_message: str
    created: dt.datetime
    submitted: dt.datetime | None
    started: dt.datetime | None
    halted: dt.datetime | None
    last_update: dt.datetime
    credential_expiry: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Instance:
        return cls(*(row[c] for c in ATTRIBUTES))

    def to_wire(self) -> dict[str, Any]:
        """The row under its column names (what the portal and the commands show)."""
        return {c: getattr(self, f.name) for c, f in zip(ATTRIBUTES, fields(self))}


@dataclass(frozen=True)
class Beat:
    """One heartbeat of a VM, as its monitor reports it."""

    instance_id: int
    load: float
    jobs: int                    # running now
    transferred_files: int
    transferred_bytes: int
    uptime: float                # seconds


@dataclass(frozen=True)
class HistoryRecord:
    time: dt.datetime
    status: str
    load: float
    jobs: int
    transferred_files: int
    transferred_bytes: int
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return {"Time": self.time, "Status": self.status, "Load": self.load, "Jobs": self.jobs,
                "TransferredFiles": self.transferred_files, "TransferredBytes": self.transferred_bytes,
                "Reason": self.reason}


@dataclass(frozen=True)
class Bucket:
    """One time bucket of the history (for plots): VMs seen Running or Stopping in it."""

    time: dt.datetime            # start of the bucket
    group: str                   # value of the group_by attribute ("" without grouping)
    load: float                  # average load of those VMs
    instances: int               # how many VMs
    jobs: float                  # sum over those VMs of their average running jobs


@dataclass(frozen=True)
class InstanceFilter:
    """A selection of instances: attribute -> allowed values, and a window on LastUpdate."""

    values: dict[str, tuple] = field(default_factory=dict)
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def clause(self):
        parts = []
        for name, allowed in self.values.items():
            if name not in FILTERABLE:
                raise InvalidArgument(f"cannot select instances by {name}; use {', '.join(FILTERABLE)}")
            parts.append(instances.c[name].in_(list(allowed)))
        if self.since:
            parts.append(instances.c.LastUpdate >= self.since)
        if self.until:
            parts.append(instances.c.LastUpdate <= self.until)
        return and_(*parts) if parts else None


def filtered(query, flt: InstanceFilter | None):
    """``query`` restricted to the selection (unchanged without one)."""
    clause = flt.clause() if flt else None
    return query if clause is None else query.where(clause)
