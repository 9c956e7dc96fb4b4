"""dirac-vm-pods: the running pods, their VMs, caps and waiting work, and their endpoints' health."""

from __future__ import annotations

import datetime as dt

from vmdirac.cli.common import command, parser
from vmdirac.cli.vm_common import MANAGER
from vmdirac.cli.wms_common import print_table
from vmdirac.core.clientconfig import ClientSession


def _until(when: dt.datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else "-"


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-vm-pods",
               "Show the running pods of your VO (an installation's host: all): their VMs by state, their caps, "
               "and the jobs of the VO waiting that their VMs could run; then their endpoints with their VMs, "
               "caps, and why the scheduler backs one off (failures in a row and the last error).",
               "$ dirac-vm-pods\n"
               "  Pod  VO       Image  Policy   Waiting  Booting  Running  Stopping  Stalled  Max  Boots/cycle\n"
               "  el9  vmdirac  el9    Elastic  12       2        3        0         0        10   5\n"
               "\n"
               "  Endpoint     Type  Priority  VMs  Max  Failures  Backed off until     Last error\n"
               "  Site1/cloud  ec2   1         5    10   3         2026-11-27 10:02:00  QuotaError: ...")
    p.parse_args(argv)
    session = ClientSession.open()
    pods = session.client(MANAGER).getRunningPods()
    if not pods:
        print("No running pod is configured for your VO (Operations/Defaults/VirtualMachines/RunningPods).")
        return 0
    rows = []
    endpoints: dict[str, dict] = {}
    for pod in pods:
        policy = pod["Policy"] + (f" ({pod['StaticInstances']})" if pod["Policy"] == "Static" else "")
        rows.append((pod["Pod"] + ("" if pod["Enabled"] else " (disabled)"), pod["VO"], pod["Image"], policy,
                     pod["WaitingJobs"], pod["Booting"], pod["Running"], pod["Instances"].get("Stopping", 0),
                     pod["Instances"].get("Stalled", 0), pod["MaxInstances"], pod["MaxBootsPerCycle"]))
        for ep in pod["Endpoints"]:
            endpoints.setdefault(ep["Endpoint"], {**ep, "Pods": []})["Pods"].append(pod["Pod"])
    print_table(("Pod", "VO", "Image", "Policy", "Waiting", "Booting", "Running", "Stopping", "Stalled", "Max",
                 "Boots/cycle"), rows)
    print()
    print_table(("Endpoint", "Type", "Priority", "VMs", "Max", "Pods", "Failures", "Backed off until", "Last error"), [
        (name, ep["Type"], ep["Priority"], ep["VMs"], ep["MaxInstances"], ",".join(ep["Pods"]), ep["Failures"],
         _until(ep["BackedOffUntil"]), ep["LastError"] if ep["Failures"] else "-")
        for name, ep in sorted(endpoints.items())])
    return 0
