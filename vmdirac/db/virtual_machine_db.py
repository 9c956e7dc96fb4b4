"""VirtualMachineDB: running pods, their images, VM instances and the instances' history.

VMDIRAC's tables (``vm_Images``, ``vm_RunningPods``, ``vm_Instances``, ``vm_History``; defined with
their typed records in ``virtual_machine_schema``) and rules:
- An instance row is written (``New``) before any driver is called, so no VM is ever booted
  unrecorded; its name (``<pod>-<id>``) is the driver's idempotency key and the VM's tag.
- Every status change is checked against ``vm.instance_status.TRANSITIONS`` (``IllegalTransition``
  otherwise) and writes its ``vm_History`` row (time, status, reason, and the last figures) in the
  same transaction. Every heartbeat writes a history row too.
- ``Cost`` accumulates ``CostPerHour`` (the endpoint image's, copied at creation) over the time
  the instance spends in a billed state, at each update.
- A stop request leaves a ``PendingCommand`` (``stop``: drain then halt, ``halt``: now) that the
  answer to every heartbeat repeats until the instance is Halted.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Integer, and_, bindparam, cast, delete, func, insert, literal_column, select, update
from sqlalchemy.engine import Connection

from vmdirac.core.db import BaseDB, transaction, utcnow
from vmdirac.core.exceptions import IllegalTransition, InvalidArgument, NotFound, VMDiracError
from vmdirac.db.virtual_machine_schema import (  # noqa: F401  (the names callers import from here)
    ATTRIBUTES, BILLED, COMMANDS, FILTERABLE, GROUPABLE, Beat, Bucket, HistoryRecord, Instance, InstanceFilter,
    deployment, filtered, history, images, instance_name, instances, metadata, running_pods,
)
from vmdirac.vm.instance_status import InstanceStatus as I, check_transition, parse_instance_status

log = logging.getLogger(__name__)

# The states a VM that reports passes through on its way to Running (it is obviously up).
_TO_RUNNING: dict[str, tuple[I, ...]] = {
    I.NEW: (I.SUBMITTED, I.RUNNING),           # it reported before the boot was recorded
    I.SUBMITTED: (I.RUNNING,),
    I.WAIT_SSH_CONTEXT: (I.CONTEXTUALIZING, I.RUNNING),
    I.CONTEXTUALIZING: (I.RUNNING,),
    I.STALLED: (I.RUNNING,),                   # heartbeats came back: a partition healed
    I.RUNNING: (),
    I.STOPPING: (),                            # draining: stays Stopping
}
# When a status is entered, the time column it stamps.
_STAMPS = {I.SUBMITTED: "Submitted", I.RUNNING: "Started", I.HALTED: "Halted"}


# The statements of the hot path (heartbeats), built once: values travel as parameters, so
# SQLAlchemy reuses their compiled form instead of building and hashing a statement per call.
_READ = select(instances).where(instances.c.InstanceID == bindparam("iid"))
# What a change needs of the row it changes (fewer columns: a cheaper read, with pymysql above all).
_CHANGED = select(*(instances.c[n] for n in ("InstanceID", "Status", "PendingCommand", "Cost", "CostPerHour",
                                              "LastUpdate", "Started", "Load", "Jobs", "TransferredFiles",
                                              "TransferredBytes")))
_LOCK = _CHANGED.where(instances.c.InstanceID == bindparam("iid")).with_for_update()
_LOCK_MANY = (_CHANGED.where(instances.c.InstanceID.in_(bindparam("iids", expanding=True)))
              .order_by(instances.c.InstanceID).with_for_update())
_UPDATE = update(instances).where(instances.c.InstanceID == bindparam("iid"))   # SET: the parameters given
_APPEND = insert(history)


def _cost(row: Mapping[str, Any], now: dt.datetime) -> float:
    """The accumulated cost, brought up to ``now``."""
    if row["Status"] not in BILLED or not row["CostPerHour"]:
        return row["Cost"]
    hours = max(0.0, (now - row["LastUpdate"]).total_seconds()) / 3600
    return row["Cost"] + hours * row["CostPerHour"]


def _ips(values: Iterable[str] | str) -> str:
    return (values if isinstance(values, str) else ",".join(v for v in values if v))[:255]


class VirtualMachineDB(BaseDB):
    metadata = metadata
    _deployment: str | None = None

    def create_tables(self) -> None:
        super().create_tables()
        from vmdirac.db import accounting_db   # _write records an instance that halts
        accounting_db.create_tables(self.engine)

    def deployment_id(self) -> str:
        """This installation's id (made once, kept in the DB): the drivers' deployment tag, so
        that several installations on one cloud never touch each other's VMs."""
        if self._deployment is None:
            self._deployment = self._deployment_id()
        return self._deployment

    @transaction
    def _deployment_id(self, conn: Connection) -> str:
        made = f"vmdirac-{uuid.uuid4().hex[:16]}"
        first_wins = (insert(deployment).prefix_with("IGNORE", dialect="mysql")
                      .prefix_with("OR IGNORE", dialect="sqlite"))
        conn.execute(first_wins.values(Name="deployment", DeploymentID=made, Created=utcnow()))
        return conn.execute(select(deployment.c.DeploymentID).where(deployment.c.Name == "deployment")).scalar_one()

    # ------------------------------------------------------------ pods (configuration snapshot)

    @transaction
    def sync_pods(self, conn: Connection, pods: Mapping[str, Any] | Iterable[Any],
                  endpoints: Mapping[str, Any] | None = None) -> None:
        """Make ``vm_RunningPods`` (and, given ``endpoints``, ``vm_Images``) what the configuration
        says: ``pods`` are ``vm.config.Pod``s (``pods(snapshot)``), ``endpoints`` its endpoints."""
        pod_list = list(pods.values() if isinstance(pods, Mapping) else pods)
        now = utcnow()
        conn.execute(delete(running_pods))
        if pod_list:
            conn.execute(insert(running_pods), [{
                "Name": p.name, "Image": p.options.Image, "VO": p.vo, "PilotGroup": p.options.PilotGroup,
                "Endpoints": ",".join(p.options.Endpoints), "Policy": p.options.Policy,
                "StopPolicy": p.options.StopPolicy, "MaxInstances": p.options.MaxInstances,
                "MaxBootsPerCycle": p.options.MaxBootsPerCycle, "StaticInstances": p.options.StaticInstances,
                "CPUPerInstance": p.options.CPUPerInstance, "Enabled": p.options.Enabled, "LastUpdate": now,
            } for p in pod_list])
        if endpoints is None:
            return
        rows = {}
        for p in pod_list:
            for name in p.options.Endpoints:
                ep = endpoints.get(name)
                img = ep.images.get(p.options.Image) if ep is not None else None
                if img is not None:
                    rows[p.options.Image, name] = {
                        "Name": p.options.Image, "Endpoint": name, "ImageID": img.ImageID, "Flavor": img.Flavor,
                        "Cores": img.Cores, "RAM": img.RAM, "CostPerHour": img.CostPerHour, "LastUpdate": now}
        conn.execute(delete(images))
        if rows:
            conn.execute(insert(images), list(rows.values()))

    @transaction(write=False)
    def running_pods(self, conn: Connection) -> dict[str, dict[str, Any]]:
        return {r["Name"]: dict(r) for r in conn.execute(select(running_pods)).mappings()}

    # ------------------------------------------------------------ creating and changing instances

    @transaction
    def new_instance(self, conn: Connection, pod: str, image: str, endpoint: str, site: str, *,
                     vo: str | None = None, cost_per_hour: float | None = None,
                     reason: str = "to be booted") -> tuple[int, str]:
        """Record a VM about to be booted (``New``); returns its id and name.

        ``vo`` and ``cost_per_hour`` default to what ``sync_pods`` recorded for the pod and image.
        """
        if vo is None:
            vo = conn.execute(select(running_pods.c.VO).where(running_pods.c.Name == pod)).scalar()
            if vo is None:
                log.warning("new instance of pod %s: the pod is not in vm_RunningPods (sync_pods), no VO", pod)
                vo = ""
        if cost_per_hour is None:
            cost_per_hour = conn.execute(select(images.c.CostPerHour).where(
                and_(images.c.Name == image, images.c.Endpoint == endpoint))).scalar() or 0.0
        now = utcnow()
        result = conn.execute(insert(instances).values(
            Name=f"new-{uuid.uuid4().hex}", Pod=pod, VO=vo, Image=image, Endpoint=endpoint, Site=site,
            Status=I.NEW.value, CostPerHour=cost_per_hour, Created=now, LastUpdate=now))
        instance_id = int(result.inserted_primary_key[0])
        name = instance_name(pod, instance_id)
        conn.execute(update(instances).where(instances.c.InstanceID == instance_id).values(Name=name))
        conn.execute(insert(history).values(InstanceID=instance_id, Time=now, Status=I.NEW.value,
                                            Reason=reason[:255]))
        return instance_id, name

    @transaction
    def set_submitted(self, conn: Connection, instance_id: int, endpoint_vm_id: str,
                      public_ips: Iterable[str] | str = (), private_ips: Iterable[str] | str = (),
                      reason: str = "the endpoint accepted the boot") -> str:
        """The endpoint booted the VM: ``New -> Submitted`` with its id and addresses; returns the
        status now. A VM faster than this call (it declared itself already) keeps its state; one
        stopped meanwhile stays Halted (the caller should terminate ``endpoint_vm_id``)."""
        row = self._lock(conn, instance_id)
        values = {"EndpointVMID": endpoint_vm_id[:255]}
        if _ips(public_ips):
            values["PublicIP"] = _ips(public_ips)
        if _ips(private_ips):
            values["PrivateIP"] = _ips(private_ips)
        if row["Status"] == I.NEW:
            return self._write(conn, row, I.SUBMITTED, reason, values)
        conn.execute(update(instances).where(instances.c.InstanceID == instance_id).values(**values))
        return row["Status"]

    @transaction
    def set_status(self, conn: Connection, instance_id: int, status: str, reason: str,
                   expect: Iterable[str] = ()) -> str:
        """Move an instance to ``status`` (checked) with its history row; a no-op when it is there.

        ``expect``: the change is made only from one of these statuses (else ``IllegalTransition``),
        so callers can act on what they read earlier without a race.
        """
        new = parse_instance_status(status)
        row = self._lock(conn, instance_id)
        self._expect(row, tuple(expect))
        if row["Status"] == new:
            return new
        return self._write(conn, row, new, reason)

    @transaction
    def set_error(self, conn: Connection, instance_id: int, message: str) -> str:
        row = self._lock(conn, instance_id)
        return self._write(conn, row, I.ERROR, message, {"ErrorMessage": message[:1024]})

    @transaction
    def declare_running(self, conn: Connection, instance_id: int, private_ip: str = "",
                        public_ip: str = "") -> Instance:
        """The VM Monitor started: the instance is Running (through the states it skipped)."""
        row = self._lock(conn, instance_id)
        values = {k: v[:255] for k, v in (("PrivateIP", private_ip), ("PublicIP", public_ip)) if v}
        self._report(conn, row, "declared running by the VM", values)
        return self._get(conn, instance_id)

    def heartbeat(self, instance_id: int, load: float, jobs: int, transferred_files: int,
                  transferred_bytes: int, uptime: float) -> str:
        """Record one heartbeat; returns the pending command ("", stop, halt) or raises."""
        (answer,) = self.heartbeats([Beat(instance_id, load, jobs, transferred_files, transferred_bytes, uptime)])
        if isinstance(answer, VMDiracError):
            raise answer
        return answer

    @transaction
    def heartbeats(self, conn: Connection, beats: list[Beat]) -> list[str | VMDiracError]:
        """Record heartbeats, each with its history row, in one transaction; per beat, in order,
        the pending command ("", "stop", "halt") or the error refusing it.

        A Stalled (or still booting) instance that reports is Running again; a Halted one is
        refused (IllegalTransition); one the endpoint reported in Error is told to halt. Beats of
        Running and Stopping instances, nearly all, are written with one statement each for all.
        """
        rows = {r["InstanceID"]: dict(r) for r in conn.execute(
            _LOCK_MANY, {"iids": sorted({b.instance_id for b in beats})}).mappings()}
        now = utcnow()
        updates, appends, out = [], [], []
        for b in beats:
            row = rows.get(b.instance_id)
            figures = {"Load": b.load, "Jobs": b.jobs, "TransferredFiles": b.transferred_files,
                       "TransferredBytes": b.transferred_bytes, "Uptime": b.uptime}
            if row is None:
                out.append(NotFound(f"instance {b.instance_id} does not exist", instance_id=b.instance_id))
            elif row["Status"] in (I.RUNNING, I.STOPPING):
                new = {**figures, "LastUpdate": now, "Cost": _cost(row, now)}
                updates.append({**new, "iid": b.instance_id})
                appends.append(self._history_row(row, row["Status"], "heartbeat", new, now))
                row.update(new)
                out.append(row["PendingCommand"])
            else:   # a change of status: the general path, at once
                try:
                    if row["Status"] == I.ERROR:
                        self._write(conn, row, I.ERROR, "heartbeat of an instance in Error: told to halt")
                        out.append("halt")
                    else:
                        self._report(conn, row, "heartbeat", figures)
                        out.append(row["PendingCommand"])
                    rows[b.instance_id] = dict(self._lock(conn, b.instance_id))
                except IllegalTransition as e:
                    out.append(e)
        if updates:
            conn.execute(_UPDATE, updates)
        if appends:
            conn.execute(_APPEND, appends)
        return out

    @transaction
    def request_stop(self, conn: Connection, instance_id: int, force: bool = False,
                     reason: str = "stop requested") -> str:
        """Ask an instance to stop; returns its status now.

        New (nothing booted) and Error instances are simply Halted; the others become Stopping
        with the pending command ``stop`` (drain, then halt) or, forced, ``halt``. A forced request
        upgrades a pending ``stop``. Halted stays Halted.
        """
        row = self._lock(conn, instance_id)
        status = row["Status"]
        if status == I.HALTED:
            return status
        if status in (I.NEW, I.ERROR):
            return self._write(conn, row, I.HALTED, reason)
        command = "halt" if force or row["PendingCommand"] == "halt" else "stop"
        if status == I.STOPPING and command == row["PendingCommand"]:
            return status
        values = {"PendingCommand": command, "ForceStop": command == "halt"}
        return self._write(conn, row, I.STOPPING, f"{reason} (force)" if force else reason, values)

    @transaction
    def set_credential_expiry(self, conn: Connection, instance_id: int, expiry: dt.datetime) -> None:
        conn.execute(update(instances).where(instances.c.InstanceID == instance_id).values(CredentialExpiry=expiry))

    @transaction
    def purge_history(self, conn: Connection, before: dt.datetime) -> int:
        """Delete history rows older than ``before``; returns how many."""
        return conn.execute(delete(history).where(history.c.Time < before)).rowcount

    # ------------------------------------------------------------ reading

    @transaction(write=False)
    def get(self, conn: Connection, instance_id: int) -> Instance:
        return self._get(conn, instance_id)

    @transaction(write=False)
    def instances(self, conn: Connection, flt: InstanceFilter | None = None, *, statuses: Iterable[str] = (),
                  pod: str | None = None, endpoint: str | None = None, limit: int = 100000) -> list[Instance]:
        """Instances in the selection, by id."""
        q = filtered(select(instances), flt).order_by(instances.c.InstanceID).limit(limit)
        statuses = [parse_instance_status(s).value for s in statuses]
        if statuses:
            q = q.where(instances.c.Status.in_(statuses))
        if pod is not None:
            q = q.where(instances.c.Pod == pod)
        if endpoint is not None:
            q = q.where(instances.c.Endpoint == endpoint)
        return [Instance.from_row(r) for r in conn.execute(q).mappings()]

    @transaction(write=False)
    def by_endpoint_vm_ids(self, conn: Connection, endpoint: str, vm_ids: Iterable[str]) -> dict[str, Instance]:
        """The instances of ``endpoint`` known under these endpoint VM ids (unknown ids are absent)."""
        out: dict[str, Instance] = {}
        ids = list(dict.fromkeys(vm_ids))
        for i in range(0, len(ids), 1000):
            q = select(instances).where(and_(instances.c.Endpoint == endpoint,
                                             instances.c.EndpointVMID.in_(ids[i:i + 1000])))
            for r in conn.execute(q).mappings():
                out[r["EndpointVMID"]] = Instance.from_row(r)
        return out

    @transaction(write=False)
    def stale(self, conn: Connection, statuses: Iterable[str], last_update_before: dt.datetime,
              limit: int = 10000) -> list[int]:
        """Ids of instances in ``statuses`` not updated (no heartbeat, no change) since the time."""
        wanted = [parse_instance_status(s).value for s in statuses]
        q = (select(instances.c.InstanceID).where(instances.c.Status.in_(wanted))
             .where(instances.c.LastUpdate < last_update_before).order_by(instances.c.InstanceID).limit(limit))
        return list(conn.execute(q).scalars())

    @transaction(write=False)
    def counts(self, conn: Connection, by: Iterable[str] = ("Pod", "Endpoint", "Status"),
               flt: InstanceFilter | None = None, statuses: Iterable[str] = ()) -> dict[tuple[str, ...], int]:
        """Number of instances per combination of the ``by`` attributes' values."""
        names = list(by)
        if not names or any(n not in GROUPABLE for n in names):
            raise InvalidArgument(f"instances are counted by {', '.join(GROUPABLE)}")
        cols = [instances.c[n] for n in names]
        q = filtered(select(*cols, func.count()).group_by(*cols), flt)
        statuses = [parse_instance_status(s).value for s in statuses]
        if statuses:
            q = q.where(instances.c.Status.in_(statuses))
        return {tuple(str(v) for v in r[:-1]): int(r[-1]) for r in conn.execute(q)}

    @transaction(write=False)
    def select(self, conn: Connection, flt: InstanceFilter | None = None, sort: list[tuple[str, str]] | None = None,
               start: int = 0, limit: int = 100) -> tuple[int, list[Instance]]:
        """A page of instances (``sort``: (attribute, ASC|DESC) pairs) and the total selected."""
        total = conn.execute(filtered(select(func.count()).select_from(instances), flt)).scalar_one()
        q = filtered(select(instances), flt)
        for name, direction in sort or [("InstanceID", "DESC")]:
            if name not in ATTRIBUTES or direction.upper() not in ("ASC", "DESC"):
                raise InvalidArgument(f"cannot sort by {name} {direction}")
            q = q.order_by(instances.c[name].desc() if direction.upper() == "DESC" else instances.c[name].asc())
        q = q.order_by(instances.c.InstanceID)   # a stable order across pages
        return total, [Instance.from_row(r) for r in conn.execute(q.offset(start).limit(limit)).mappings()]

    @transaction(write=False)
    def history(self, conn: Connection, instance_id: int) -> list[HistoryRecord]:
        self._get(conn, instance_id)
        h = history.c
        q = (select(h.Time, h.Status, h.Load, h.Jobs, h.TransferredFiles, h.TransferredBytes, h.Reason)
             .where(h.InstanceID == instance_id).order_by(h.HistoryID))
        return [HistoryRecord(*r) for r in conn.execute(q)]

    @transaction(write=False)
    def history_buckets(self, conn: Connection, bucket_seconds: int, since: dt.datetime,
                        group_by: str | None = None, flt: InstanceFilter | None = None) -> list[Bucket]:
        """The history since ``since`` in buckets of ``bucket_seconds``: per bucket (and value of
        ``group_by``), how many VMs were Running or Stopping, their average load, their jobs."""
        if bucket_seconds < 1:
            raise InvalidArgument("buckets are at least 1 second long")
        if group_by and group_by not in GROUPABLE:
            raise InvalidArgument(f"history is grouped by {', '.join(GROUPABLE)}")
        h = history.c
        start = self._bucket_start(h.Time, bucket_seconds).label("bucket")
        group = (instances.c[group_by] if group_by else literal_column("''")).label("grp")
        per_vm = (select(start, group, h.InstanceID, func.avg(h.Load).label("load"), func.avg(h.Jobs).label("jobs"))
                  .select_from(history.join(instances, instances.c.InstanceID == h.InstanceID))
                  .where(h.Time >= since).where(h.Status.in_([I.RUNNING.value, I.STOPPING.value]))
                  .group_by(start, group, h.InstanceID))
        per_vm = filtered(per_vm, flt).subquery()
        q = (select(per_vm.c.bucket, per_vm.c.grp, func.avg(per_vm.c.load), func.count(), func.sum(per_vm.c.jobs))
             .group_by(per_vm.c.bucket, per_vm.c.grp).order_by(per_vm.c.bucket, per_vm.c.grp))
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return [Bucket(epoch + dt.timedelta(seconds=int(b)), str(g), round(float(load or 0), 3), int(n),
                       round(float(jobs or 0), 3)) for b, g, load, n, jobs in conn.execute(q)]

    # ------------------------------------------------------------ inside

    def _bucket_start(self, column, seconds: int):
        """Seconds since the epoch of the start of the bucket of ``column`` (stored as naive UTC)."""
        if self.backend == "mysql":
            epoch = func.timestampdiff(literal_column("SECOND"), literal_column("'1970-01-01 00:00:00'"), column,
                                       type_=Integer)
        else:
            epoch = cast(func.strftime("%s", column), Integer)
        width = literal_column(str(int(seconds)))   # a literal: the same text in SELECT and GROUP BY
        return (epoch // width) * width

    def _get(self, conn: Connection, instance_id: int) -> Instance:
        row = conn.execute(_READ, {"iid": instance_id}).mappings().first()
        if row is None:
            raise NotFound(f"instance {instance_id} does not exist", instance_id=instance_id)
        return Instance.from_row(row)

    def _lock(self, conn: Connection, instance_id: int) -> Mapping[str, Any]:
        row = conn.execute(_LOCK, {"iid": instance_id}).mappings().first()
        if row is None:
            raise NotFound(f"instance {instance_id} does not exist", instance_id=instance_id)
        return row

    @staticmethod
    def _expect(row: Mapping[str, Any], expect: tuple[str, ...]) -> None:
        if expect and row["Status"] not in expect:
            raise IllegalTransition(f"instance {row['InstanceID']} is {row['Status']}, not {' or '.join(expect)}",
                                    instance_id=row["InstanceID"])

    def _report(self, conn: Connection, row: Mapping[str, Any], reason: str, values: dict[str, Any]) -> str:
        """A VM reported (declared itself, or a heartbeat): it is Running, through the states it
        skipped (one history row each), or still Stopping; ``values`` go with the last row."""
        path = _TO_RUNNING.get(row["Status"])
        if path is None:
            raise IllegalTransition(f"instance {row['InstanceID']} is {row['Status']}: it may not report any more",
                                    instance_id=row["InstanceID"])
        for status in path[:-1]:
            self._write(conn, row, status, reason)
            row = self._lock(conn, row["InstanceID"])
        return self._write(conn, row, path[-1] if path else row["Status"], reason, values)

    def _write(self, conn: Connection, row: Mapping[str, Any], status: str, reason: str,
               values: dict[str, Any] | None = None) -> str:
        """Update the locked ``row`` to ``status`` (checked when it changes) and ``values``, and
        append its history row. The one place where statuses change."""
        instance_id = row["InstanceID"]
        check_transition(instance_id, row["Status"], status)
        now = utcnow()
        new: dict[str, Any] = {"Status": str(status), "LastUpdate": now, "Cost": _cost(row, now), **(values or {})}
        if status != row["Status"]:
            stamp = _STAMPS.get(I(status))
            if stamp and not (stamp == "Started" and row["Started"]):
                new[stamp] = now
            if status == I.HALTED:
                new["PendingCommand"] = ""
        conn.execute(_UPDATE, {**new, "iid": instance_id})
        conn.execute(_APPEND, self._history_row(row, status, reason, new, now))
        if status == I.HALTED and row["Status"] != I.HALTED:   # its accounting record, in this transaction
            from vmdirac.db.accounting_db import record_vm
            record_vm(conn, instance_id)
        return str(status)

    @staticmethod
    def _history_row(row: Mapping[str, Any], status: str, reason: str, new: dict[str, Any],
                     now: dt.datetime) -> dict[str, Any]:
        seen = {**row, **new}
        return {"InstanceID": row["InstanceID"], "Time": now, "Status": str(status), "Load": seen["Load"],
                "Jobs": seen["Jobs"], "TransferredFiles": seen["TransferredFiles"],
                "TransferredBytes": seen["TransferredBytes"], "Reason": reason[:255]}
