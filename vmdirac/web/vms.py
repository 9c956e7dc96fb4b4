"""Virtual Machines: VMDIRAC's "Browse instances" (table, History Log, Load vs Jobs plot, Stop)
and the running pods with their waiting work and caps (what ``dirac-vm-pods`` shows)."""

from __future__ import annotations

from typing import Any

from vmdirac.core.exceptions import InvalidArgument, ServiceUnavailable
from vmdirac.web.backend import VM_MANAGER
from vmdirac.web.base import PageHandler, PortalHandler, id_list

STATUSES = ["New", "Submitted", "Wait_ssh_context", "Contextualizing", "Running", "Stopping", "Stalled",
            "Error", "Halted"]
STOPPERS = ("Operator",)
MAX_PAGE = 500


class VirtualMachinesPage(PageHandler):
    template = "vms.html"
    title = "Virtual Machines"

    def page_args(self) -> dict:
        assert self.user is not None
        return {"statuses": STATUSES, "may_stop": self.user.has(*STOPPERS)}


class InstancesHandler(PortalHandler):
    """``GET /api/vms?status=...&start=&limit=``: one page of instances, newest first."""

    async def get(self) -> None:
        select: dict[str, Any] = {}
        statuses = list(dict.fromkeys(s for s in self.get_query_arguments("status") if s))
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            raise InvalidArgument(f"{unknown[0][:40]!r} is not an instance status: {', '.join(STATUSES)}")
        if statuses:
            select["Status"] = statuses
        start, limit = self.int_arg("start", 0), self.int_arg("limit", 25, 1, MAX_PAGE)
        page = await self.rpc(VM_MANAGER, "getInstances", select, [["InstanceID", "DESC"]], start, limit)
        names = page["ParameterNames"]
        rows = [dict(zip(names, r)) for r in page["Records"]]
        self.reply({"total": page["TotalRecords"], "counts": page["Extras"], "start": start,
                    "records": [_row(r) for r in rows]})


def _row(r: dict) -> dict:
    return {"InstanceID": r["InstanceID"], "Name": r["Name"], "Pod": r["Pod"], "Image": r["Image"],
            "EndPoint": r["Endpoint"], "Status": r["Status"], "EndpointVMID": r["EndpointVMID"],
            "IP": r["PublicIP"] or r["PrivateIP"], "Load": r["Load"], "Uptime": r["Uptime"], "Jobs": r["Jobs"],
            "LastUpdate": r["LastUpdate"], "Error": r["ErrorMessage"], "PendingCommand": r["PendingCommand"]}


class HistoryHandler(PortalHandler):
    async def get(self, instance_id: str) -> None:
        rows = await self.rpc(VM_MANAGER, "getInstanceHistory", int(instance_id))
        self.reply({"columns": ["Time", "Status", "Load", "Jobs", "TransferredFiles", "TransferredBytes", "Reason"],
                    "records": rows})


class LoadPlotHandler(PortalHandler):
    """``GET /api/vms/<id>/plot.png``: Load vs Jobs of one instance over its history."""

    async def get(self, instance_id: str) -> None:
        rows = await self.rpc(VM_MANAGER, "getInstanceHistory", int(instance_id))
        try:
            from vmdirac.accounting.plots import load_vs_jobs_png
        except ImportError as e:
            raise ServiceUnavailable("plots are not available in this installation") from e
        png = await self.run(load_vs_jobs_png, [r["Time"] for r in rows], [float(r["Load"] or 0) for r in rows],
                             [int(r["Jobs"] or 0) for r in rows], f"Instance {instance_id}: Load vs Jobs")
        self.set_header("Content-Type", "image/png")
        self.finish(png)


class StopHandler(PortalHandler):
    """``POST /api/vms/stop {"ids": [...], "force": bool}`` (the service allows Operators only)."""

    async def post(self) -> None:
        body = self.json_body()
        ids = id_list(body.get("ids"), "instance")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidArgument("force must be true or false")
        result = await self.rpc(VM_MANAGER, "stopInstance", ids, force)
        failed = result.get("Failed", {})
        self.reply({"results": [{"id": i, "ok": str(i) not in failed,
                                 "message": failed.get(str(i), result.get("Statuses", {}).get(str(i), "stopping"))}
                                for i in ids]})


class PodsHandler(PortalHandler):
    """``GET /api/pods``: the running pods of the user's VO with their VMs by state, caps, the
    jobs their VMs could run, and their endpoints with why the scheduler backs one off
    (VirtualMachineManager ``getRunningPods``, as ``dirac-vm-pods`` shows them)."""

    async def get(self) -> None:
        pods = await self.rpc(VM_MANAGER, "getRunningPods")
        rows, eps = [], {}
        for pod in pods:
            rows.append({"Pod": pod["Pod"], "Enabled": pod["Enabled"], "VO": pod["VO"], "Image": pod["Image"],
                         "Policy": pod["Policy"], "Waiting": pod["WaitingJobs"], "Booting": pod["Booting"],
                         "Running": pod["Running"], "Stopping": pod["Instances"].get("Stopping", 0),
                         "Stalled": pod["Instances"].get("Stalled", 0), "MaxInstances": pod["MaxInstances"],
                         "MaxBootsPerCycle": pod["MaxBootsPerCycle"], "Reason": pod["Reason"]})
            for ep in pod["Endpoints"]:
                row = eps.setdefault(ep["Endpoint"], {**ep, "Pods": []})
                row["Pods"].append(pod["Pod"])
        self.reply({"pods": rows, "endpoints": [eps[name] for name in sorted(eps)]})
