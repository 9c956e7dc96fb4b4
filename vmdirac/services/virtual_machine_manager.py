"""WorkloadManagement/VirtualMachineManager: what VMs report about themselves, and what operators
and the portal ask about VMs.

Two kinds of callers:
- **A VM**, with its per-VM credential (``logic.vm_credentials``): ``declareInstanceRunning``,
  ``instanceHeartBeat``, ``declareInstanceHalting``, ``renewInstanceCredential``. These take no
  instance id: the instance is the one the credential is bound to (``Caller.instance_id``), so a
  VM can only ever report for itself; any other caller is refused (``NotAuthorized``).
- **People and the portal**: ``getInstances``, ``getInstanceHistory``, ``getInstanceCounters``,
  ``getHistoryForPlot`` for NormalUser (read-only), Operator and JobAdministrator;
  ``stopInstance`` for Operator only. A person sees and stops the VMs of the pods of their own VO
  (a pod's VO is its PilotGroup's, in the configuration); a host with Operator or
  JobAdministrator (a service acting for the whole installation) sees all.

The public IP: the Service API gives methods no access to the request, so the VM sends its public
address itself (``publicIP``, optional). When it does not know it (behind NAT), the addresses the
endpoint gave at boot (``set_submitted``) are kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from typing import Any

from vmdirac.core.exceptions import IllegalTransition, InvalidArgument, NotAuthorized, NotFound
from vmdirac.core.export import Caller, Service, export
from vmdirac.core.group_commit import GroupCommit
from vmdirac.db.endpoint_status_db import EndpointStatusDB
from vmdirac.db.task_queue_db import TaskQueueDB
from vmdirac.db.virtual_machine_db import ATTRIBUTES, FILTERABLE, GROUPABLE, Beat, InstanceFilter, VirtualMachineDB
from vmdirac.logic.selection import narrow, parse_selection
from vmdirac.logic.vm_credentials import credential_expiry, credential_hours, issue_credential
from vmdirac.vm import config as vmconfig
from vmdirac.vm.instance_status import ALIVE, BOOTING, InstanceStatus as I

VMS = ("VmRpcOperation", "GenericPilot")          # per-VM credentials keep only these properties
READERS = ("NormalUser", "Operator", "JobAdministrator")
ADMINS = ("Operator", "JobAdministrator")
STOPPERS = ("Operator",)
MAX_PAGE = 1000
MAX_BUCKETS = 10000
# The portal's "Browse instances" columns, in order.
WEB_COLUMNS = ["InstanceID", "Name", "Pod", "Image", "Endpoint", "Status", "EndpointVMID", "PublicIP", "PrivateIP",
               "Load", "Uptime", "Jobs", "TransferredFiles", "TransferredBytes", "Cost", "PendingCommand",
               "LastUpdate", "ErrorMessage"]


def _own_instance(caller: Caller) -> int:
    if caller.instance_id is None:
        raise NotAuthorized(f"{caller} is not a VM: this method needs a per-VM credential")
    return caller.instance_id


def _check_ips(value: str, what: str) -> str:
    for item in filter(None, (v.strip() for v in value.split(","))):
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise InvalidArgument(f"{what}: {item!r} is not an IP address") from None
    return value.replace(" ", "")[:255]


def _non_negative(**figures: float) -> None:
    for name, value in figures.items():
        if value < 0:
            raise InvalidArgument(f"{name} must not be negative ({value})")


def visible_filter(caller: Caller, pod_vos: dict[str, str]) -> dict[str, tuple]:
    """The restriction on any selection of instances made for ``caller``: the pods of its own VO
    (``pod_vos``: pod -> VO, from the configuration), except for a host with an administrator
    property, which sees all."""
    if caller.has(*ADMINS) and (caller.is_host or not caller.vo):
        return {}
    return {"Pod": tuple(sorted(pod for pod, vo in pod_vos.items() if vo == caller.vo))}


def make_filter(caller: Caller, select: dict[str, Any], pod_vos: dict[str, str]) -> InstanceFilter:
    """The portal's selection dict (attribute -> value or list; FromDate/ToDate on LastUpdate)."""
    values, since, until, _ = parse_selection(select, FILTERABLE, "InstanceID", "instances")
    return InstanceFilter(narrow(values, visible_filter(caller, pod_vos)), since, until)


class VirtualMachineManagerService(Service):
    system = "WorkloadManagement"
    name = "VirtualMachineManager"

    def initialize(self) -> None:
        self.db = VirtualMachineDB(self.context.engine)
        self.db.create_tables()
        self._pods: tuple[int, dict[str, str]] = (-1, {})
        # Group commit of heartbeats: nothing is acknowledged before it is in the DB, and beats
        # arriving together share one transaction (one statement per kind for all of them).
        self.heartbeats = GroupCommit(self.db.heartbeats, writers=2, max_batch=500)
        self.tqdb = TaskQueueDB(self.context.engine)
        self.tqdb.create_tables()
        self.endpoint_status = EndpointStatusDB(self.context.engine)
        self.endpoint_status.create_tables()

    def selection(self, caller: Caller, select: dict[str, Any]) -> InstanceFilter:
        """``select`` narrowed to what ``caller`` may see."""
        snap = self.context.config.current
        version, pod_vos = self._pods
        if version != snap.version:
            pod_vos = {name: pod.vo for name, pod in vmconfig.pods(snap).items()}
            self._pods = (snap.version, pod_vos)
        return make_filter(caller, select, pod_vos)

    # ------------------------------------------------------------ for the VM itself

    @export(properties=VMS)
    def declareInstanceRunning(self, caller: Caller, privateIP: str, publicIP: str = "") -> dict:
        """The VM Monitor started: the caller's instance is Running. ``publicIP`` is what the VM
        knows of its public address ("" keeps the endpoint's). Returns id, name and status."""
        instance_id = _own_instance(caller)
        found = self.db.declare_running(instance_id, _check_ips(privateIP, "privateIP"),
                                        _check_ips(publicIP, "publicIP"))
        return {"InstanceID": found.instance_id, "Name": found.name, "Status": found.status,
                "PendingCommand": found.pending_command}

    @export(properties=VMS)
    async def instanceHeartBeat(self, caller: Caller, load: float, jobs: int, transferredFiles: int,
                                transferredBytes: int, uptime: float) -> dict:
        """Figures of the caller's instance; the answer carries the pending command:
        ``""`` (carry on), ``"stop"`` (take no new job, halt when the running ones end),
        ``"halt"`` (halt now). A Halted instance is refused (IllegalTransition)."""
        instance_id = _own_instance(caller)
        _non_negative(load=load, jobs=jobs, transferredFiles=transferredFiles, transferredBytes=transferredBytes,
                      uptime=uptime)
        beat = Beat(instance_id, load, jobs, transferredFiles, transferredBytes, uptime)
        return {"command": await self.heartbeats.submit(beat)}

    @export(properties=VMS)
    def declareInstanceHalting(self, caller: Caller) -> dict:
        """The VM is about to end itself: its instance is Halted."""
        instance_id = _own_instance(caller)
        status = self.db.set_status(instance_id, I.HALTED, "declared halting by the VM")
        return {"InstanceID": instance_id, "Status": status}

    @export(properties=VMS)
    def renewInstanceCredential(self, caller: Caller) -> str:
        """A fresh credential (proxy PEM) for the caller's own instance, in the caller's group,
        valid ``CredentialHours``; refused once the instance is Halted or in Error."""
        instance_id = _own_instance(caller)
        try:
            status = self.db.get(instance_id).status
        except NotFound:
            raise NotAuthorized(f"instance {instance_id} is not known here", instance_id=instance_id) from None
        if status in (I.HALTED, I.ERROR):
            raise IllegalTransition(f"instance {instance_id} is {status}: no new credential",
                                    instance_id=instance_id)
        pem = issue_credential(self.context, instance_id, caller.group, credential_hours(self.context.config.current))
        self.db.set_credential_expiry(instance_id, credential_expiry(pem))
        return pem.decode()

    # ------------------------------------------------------------ for people and the portal

    @export(properties=READERS)
    def getInstances(self, caller: Caller, selectDict: dict, sortList: list[list[str]] | None = None,
                     startItem: int = 0, maxItems: int = 25) -> dict:
        """One page of instances: ParameterNames, Records, TotalRecords, Extras (counts per Status)."""
        if not 0 <= startItem or not 1 <= maxItems <= MAX_PAGE:
            raise InvalidArgument(f"startItem must be >= 0 and maxItems between 1 and {MAX_PAGE}")
        sort = []
        for item in sortList or [["InstanceID", "DESC"]]:
            if len(item) != 2 or item[0] not in ATTRIBUTES or item[1].upper() not in ("ASC", "DESC"):
                raise InvalidArgument("sortList items are [attribute, 'ASC' or 'DESC']")
            sort.append((item[0], item[1]))
        flt = self.selection(caller, selectDict)
        total, rows = self.db.select(flt, sort, startItem, maxItems)
        records = [[wire[c] for c in WEB_COLUMNS] for wire in (r.to_wire() for r in rows)]
        extras = {k[0]: n for k, n in self.db.counts(("Status",), flt).items()}
        return {"ParameterNames": WEB_COLUMNS, "Records": records, "TotalRecords": total, "Extras": extras}

    @export(properties=READERS)
    def getInstanceHistory(self, caller: Caller, instanceID: int) -> list[dict]:
        """Every status change and heartbeat of one instance, oldest first."""
        self._visible_ids(caller, [instanceID])
        return [h.to_wire() for h in self.db.history(instanceID)]

    @export(properties=READERS)
    def getInstanceCounters(self, caller: Caller, attribute: str | list[str], selectDict: dict | None = None) -> dict:
        """Instances per value of ``attribute`` (Status, Pod, Endpoint, Site, Image, VO); with a
        list of attributes, nested: ``{"pod1": {"Running": 3}}``."""
        names = [attribute] if isinstance(attribute, str) else attribute
        if not names or any(n not in GROUPABLE for n in names):
            raise InvalidArgument(f"instances are counted by {', '.join(GROUPABLE)}")
        out: dict = {}
        for key, n in self.db.counts(tuple(names), self.selection(caller, selectDict or {})).items():
            node = out
            for value in key[:-1]:
                node = node.setdefault(value, {})
            node[key[-1]] = n
        return out

    @export(properties=READERS)
    def getHistoryForPlot(self, caller: Caller, bucketSeconds: int, sinceHours: float,
                          groupBy: str = "", selectDict: dict | None = None) -> list[dict]:
        """Time buckets of the history since ``sinceHours`` ago: per bucket (and ``groupBy`` value:
        Pod, Endpoint, Site, Image, VO) the VMs Running or Stopping, their average load, their jobs."""
        if bucketSeconds < 1 or sinceHours <= 0 or sinceHours * 3600 / bucketSeconds > MAX_BUCKETS:
            raise InvalidArgument(f"bucketSeconds >= 1, sinceHours > 0, and at most {MAX_BUCKETS} buckets")
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=sinceHours)
        flt = self.selection(caller, selectDict or {})
        buckets = self.db.history_buckets(bucketSeconds, since, groupBy or None, flt)
        return [{"Time": b.time, "Group": b.group, "Load": b.load, "Instances": b.instances, "Jobs": b.jobs}
                for b in buckets]

    @export(properties=STOPPERS)
    def stopInstance(self, caller: Caller, instanceIDs: int | list[int], force: bool = False) -> dict:
        """Ask instances to stop: drain (no new job, running ones end), then halt; ``force``: halt
        now. ``New`` instances (not booted yet) are simply Halted. DIRAC's bulk answer, plus each
        instance's status now: ``{"Successful": [ids], "Failed": {id: reason}, "Statuses": {id: s}}``."""
        ids = list(dict.fromkeys([instanceIDs] if isinstance(instanceIDs, int) else instanceIDs))
        if not ids or any(i <= 0 for i in ids):
            raise InvalidArgument("instance ids are positive integers, at least one")
        visible, failed = self._visible_ids(caller, ids, strict=False)
        done, statuses = [], {}
        for instance_id in visible:
            try:
                statuses[str(instance_id)] = self.db.request_stop(instance_id, force, f"stop requested by {caller}")
                done.append(instance_id)
            except (IllegalTransition, NotFound) as e:
                failed[instance_id] = e.message
        return {"Successful": done, "Failed": {str(k): v for k, v in failed.items()}, "Statuses": statuses}

    @export(properties=READERS)
    def getRunningPods(self, caller: Caller) -> list[dict]:
        """The running pods of the caller's VO (all, for an installation-wide administrator), as
        the scheduler sees them: caps, the jobs waiting that their VMs could run (all owners of
        the VO), their VMs by status, and each endpoint's VMs, cap and failures (the last error
        and until when the scheduler backs it off), so that a pod without VMs says why."""
        snap = self.context.config.current
        pods, endpoints = vmconfig.pods(snap), vmconfig.endpoints(snap)
        allowed = visible_filter(caller, {name: pod.vo for name, pod in pods.items()}).get("Pod")
        names = sorted(n for n in pods if allowed is None or n in allowed)
        asked = [(n, ep) for n in names if pods[n].options.Enabled for ep in pods[n].options.Endpoints]
        work = self.tqdb.waiting_work([vmconfig.pod_resource(pods[n], endpoints[ep]) for n, ep in asked])
        runnable: dict[str, set[int]] = {}
        for (name, _), tq_ids in zip(asked, work.matches):
            runnable.setdefault(name, set()).update(tq_ids)
        by_pod = self.db.counts(("Pod", "Status"), InstanceFilter({"Pod": tuple(names)}))
        by_endpoint = self.db.counts(("Endpoint",), statuses=sorted(ALIVE))
        states = self.endpoint_status.states()
        now = dt.datetime.now(dt.timezone.utc)
        out = []
        for name in names:
            pod = pods[name]
            jobs, cpu = work.of(runnable.get(name, set()))
            statuses = {status: n for (p, status), n in by_pod.items() if p == name}
            eps = []
            for ep_name in pod.options.Endpoints:
                ep, st = endpoints[ep_name], states.get(ep_name)
                eps.append({"Endpoint": ep_name, "Type": ep.options.Type, "Priority": ep.options.Priority,
                            "MaxInstances": ep.options.MaxInstances, "VMs": by_endpoint.get((ep_name,), 0),
                            "Failures": st.failures if st else 0, "LastError": st.last_error if st else "",
                            "LastErrorTime": st.last_error_time if st else None,
                            "BackedOffUntil": st.backed_off_until if st and st.backed_off(now) else None})
            failing = [e for e in eps if e["Failures"]]
            out.append({
                "Pod": name, "VO": pod.vo, "Image": pod.options.Image, "Policy": pod.options.Policy,
                "StaticInstances": pod.options.StaticInstances, "StopPolicy": pod.options.StopPolicy,
                "Enabled": pod.options.Enabled, "MaxInstances": pod.options.MaxInstances,
                "MaxBootsPerCycle": pod.options.MaxBootsPerCycle, "WaitingJobs": jobs, "WaitingCPU": cpu,
                "Instances": statuses, "Booting": sum(n for s, n in statuses.items() if s in BOOTING),
                "Running": statuses.get(I.RUNNING, 0), "Endpoints": eps,
                "Reason": "; ".join(f"{e['Endpoint']}: {e['LastError']} ({e['Failures']} in a row)" for e in failing),
            })
        return out

    def _visible_ids(self, caller: Caller, ids: list[int], strict: bool = True) -> tuple[list[int], dict[int, str]]:
        """Split ids into those ``caller`` may see and refusals; ``strict`` raises on a refusal.
        A missing instance and another VO's answer alike, so ids cannot be probed."""
        known = {i.instance_id for i in self.db.instances(self.selection(caller, {"InstanceID": ids}))}
        refused = {i: f"instance {i} does not exist or is not of your VO" for i in ids if i not in known}
        if refused and strict:
            first = next(iter(refused))
            raise NotAuthorized(refused[first], instance_id=first)
        return [i for i in ids if i in known], refused

    @export(properties=("Operator",))
    async def checkEndpoints(self, caller: Caller, endpoint: str = "") -> list[dict]:
        """``dirac-vm-endpoint-status``: for each configured cloud endpoint (or only ``endpoint``,
        "<Site>/<Endpoint>"), whether its driver authenticates and finds each image and flavor.
        One row per image (one per endpoint when authentication fails). Drivers block: each check
        runs in the executor, on a driver object of its own."""
        from vmdirac.drivers.base import make_driver

        known = vmconfig.endpoints(self.context.config.current)
        if endpoint and endpoint not in known:
            raise NotFound(f"no endpoint {endpoint} (Resources/Sites/<Site>/Cloud/<Endpoint>)", endpoint=endpoint)
        deployment = await asyncio.to_thread(self.db.deployment_id)

        def check(ep: vmconfig.Endpoint) -> list[dict]:
            row = {"Endpoint": ep.name, "Type": ep.options.Type}
            try:
                result = make_driver(ep, deployment, self.context.paths.root / "clouds" / ep.name.replace("/", "_")).check()
            except Exception as e:   # a driver that cannot even be made is a row, not a failed call
                return [{**row, "Auth": False, "Image": "", "ImageID": "", "ImageOK": None, "Flavor": "",
                         "FlavorOK": None, "Reason": f"{type(e).__name__}: {getattr(e, 'message', e)}"}]
            if not result.auth_ok or not result.images:
                return [{**row, "Auth": result.auth_ok, "Image": "", "ImageID": "", "ImageOK": None, "Flavor": "",
                         "FlavorOK": None, "Reason": result.reason}]
            return [{**row, "Auth": True, "Image": i.image, "ImageID": i.image_id, "ImageOK": i.image_ok,
                     "Flavor": i.flavor, "FlavorOK": i.flavor_ok, "Reason": i.reason} for i in result.images]

        names = [endpoint] if endpoint else sorted(known)
        results = await asyncio.gather(*(asyncio.to_thread(check, known[n]) for n in names))
        return [row for rows in results for row in rows]
