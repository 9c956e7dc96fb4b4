"""dirac-vm-pods: the running pods of the configuration, their VMs, caps, and waiting work."""

from __future__ import annotations

from typing import Any

from vmdirac.cli.common import command, parser
from vmdirac.cli.vm_common import MANAGER
from vmdirac.cli.wms_common import print_table
from vmdirac.core.clientconfig import ClientSession
from vmdirac.vm import config as vmconfig
from vmdirac.vm.instance_status import ALIVE, BOOTING, InstanceStatus as I


def _resource_wire(res: Any) -> dict:
    """A ResourceDescription as the Matcher takes it."""
    return {"Site": res.site, "Endpoint": res.endpoint, "Image": res.image, "Platform": res.platform,
            "Tag": list(res.tags), "RequiredTag": list(res.required_tags), "NumberOfProcessors": res.cores,
            "MaxRAM": res.max_ram_mb, "VO": res.vo}


def waiting_jobs(matcher: Any, pod: vmconfig.Pod, endpoints: dict[str, vmconfig.Endpoint]) -> int | None:
    """Jobs waiting in task queues that the pod's VMs could run, as the scheduler counts them
    (its ``pod_resource``); None when that helper is not available."""
    try:
        from vmdirac.vm.config import pod_resource
    except ImportError:
        return None
    queues: dict[str, dict] = {}
    for name in pod.options.Endpoints:
        queues.update(matcher.getMatchingTaskQueues(_resource_wire(pod_resource(pod, endpoints[name]))))
    return sum(q["Jobs"] for q in queues.values())


def _count(counters: dict, key: str, statuses: frozenset[str]) -> int:
    return sum(n for status, n in counters.get(key, {}).items() if status in statuses)


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-vm-pods",
               "Show the running pods: their VMs by state, their caps, and the jobs waiting that their "
               "VMs could run (an operator sees all of the pods' VO; others their own jobs); then the "
               "endpoints with their VMs and caps.",
               "$ dirac-vm-pods\n"
               "  Pod  VO       Image  Policy   Waiting  Booting  Running  Stopping  Stalled  Max  Boots/cycle\n"
               "  el9  vmdirac  el9    Elastic  12       2        3        0         0        10   5")
    p.parse_args(argv)
    session = ClientSession.open()
    snapshot = session.snapshot
    pods, endpoints = vmconfig.pods(snapshot), vmconfig.endpoints(snapshot)
    manager = session.client(MANAGER)
    by_pod = manager.getInstanceCounters(["Pod", "Status"], {})
    by_endpoint = manager.getInstanceCounters(["Endpoint", "Status"], {})
    matcher = session.client("WorkloadManagement/Matcher")
    rows = []
    for name, pod in sorted(pods.items()):
        waiting = waiting_jobs(matcher, pod, endpoints) if pod.options.Enabled else 0
        policy = pod.options.Policy + (f" ({pod.options.StaticInstances})" if pod.options.Policy == "Static" else "")
        rows.append((name + ("" if pod.options.Enabled else " (disabled)"), pod.vo, pod.options.Image, policy,
                     "-" if waiting is None else waiting, _count(by_pod, name, BOOTING),
                     _count(by_pod, name, frozenset({I.RUNNING})), _count(by_pod, name, frozenset({I.STOPPING})),
                     _count(by_pod, name, frozenset({I.STALLED})), pod.options.MaxInstances,
                     pod.options.MaxBootsPerCycle))
    if not rows:
        print("No running pod is configured (Operations/Defaults/VirtualMachines/RunningPods).")
        return 0
    print_table(("Pod", "VO", "Image", "Policy", "Waiting", "Booting", "Running", "Stopping", "Stalled", "Max",
                 "Boots/cycle"), rows)
    print()
    print_table(("Endpoint", "Type", "Priority", "VMs", "Max", "Pods"), [
        (name, ep.options.Type, ep.options.Priority, _count(by_endpoint, name, ALIVE), ep.options.MaxInstances,
         ",".join(sorted(p for p, pod in pods.items() if name in pod.options.Endpoints)))
        for name, ep in sorted(endpoints.items())])
    return 0
