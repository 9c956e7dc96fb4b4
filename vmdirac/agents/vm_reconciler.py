"""VirtualMachineReconciler: makes the DB and the clouds agree.

- no heartbeat for ``StallingInterval`` -> Stalled, and terminated at its endpoint;
- VMs at an endpoint with our deployment tag that the DB does not know, or has Halted -> terminated
  (orphans: a scheduler that died between the boot and its record, a VM that outlived its halt);
- instances whose VM the endpoint no longer has -> Halted ("gone at the endpoint");
- instances past their pod's ``MaxLifetime`` -> asked to stop (drain, then halt).
Nothing running a job is killed here, except a Stalled VM (it has not been heard of for the
whole stalling interval: its jobs are the StalledJobAgent's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vmdirac.agents.vm_scheduler import state_dir
from vmdirac.core.agent import Agent, AgentOptions
from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import VMDiracError
from vmdirac.db.virtual_machine_db import VirtualMachineDB
from vmdirac.drivers.base import INSTANCE_TAG, Driver, DriverError, DriverPool
from vmdirac.vm import config as vmconfig
from vmdirac.vm.reconcile import Known, decide


@dataclass(frozen=True)
class ReconcilerOptions(AgentOptions):
    PollingTime: float = 300.0
    StallingInterval: float = 40 * 60.0   # VMDIRAC's 40 minutes
    BootGrace: float = 40 * 60.0          # a Submitted VM has this long to send its first heartbeat




class VirtualMachineReconciler(Agent):
    system = "WorkloadManagement"
    name = "VirtualMachineReconciler"
    Options = ReconcilerOptions

    def initialize(self) -> None:
        self.vmdb = VirtualMachineDB(self.context.engine)
        self.vmdb.create_tables()
        self.pool = DriverPool(self.vmdb.deployment_id, lambda name: state_dir(self.context, name))

    def driver(self, endpoint: vmconfig.Endpoint) -> Driver:
        return self.pool.get(endpoint)

    @property
    def drivers(self) -> dict[str, Driver]:
        return self.pool.drivers

    def execute(self) -> None:
        opts = self.options
        snap = self.context.config.current
        endpoints = vmconfig.endpoints(snap)
        pods = vmconfig.pods(snap)
        # The clouds first, then the DB (see ``reconcile.decide``): a VM booted in between
        # has its row already, and a row changed in between is not judged on the older listing.
        listed_at = utcnow()
        nodes = {}
        for name, endpoint in endpoints.items():
            try:
                nodes[name] = self.driver(endpoint).list_nodes()
            except (DriverError, VMDiracError, OSError) as e:
                self.log.warning("cannot list the VMs of %s: %s", name, e)
        known = [Known(i.instance_id, i.name, i.endpoint, i.endpoint_vm_id, i.status, i.last_update, i.started, i.pod)
                 for i in self.vmdb.instances()]
        tagged = {(ep, n.tags.get(INSTANCE_TAG)): n.vm_id for ep, ns in nodes.items() for n in ns}
        known = [k if k.vm_id else dataclasses.replace(k, vm_id=tagged.get((k.endpoint, k.name), "")) for k in known]
        actions = decide(known, nodes, utcnow(), opts.StallingInterval, opts.BootGrace,
                         {n: p.options.MaxLifetime for n, p in pods.items()}, listed_at)
        by_id = {k.instance_id: k for k in known}
        for instance_id in actions.stall:
            k = by_id[instance_id]
            self._safely(self.vmdb.set_status, instance_id, "Stalled",
                         f"no heartbeat for {opts.StallingInterval:.0f} s")
            if k.vm_id and k.endpoint in endpoints:
                self._safely(self.driver(endpoints[k.endpoint]).terminate, k.vm_id)
        for instance_id in actions.close:
            self._safely(self.vmdb.set_status, instance_id, "Halted", "gone at the endpoint")
        for endpoint, vm_id in actions.terminate:
            self.log.info("terminating orphan VM %s at %s", vm_id, endpoint)
            self._safely(self.driver(endpoints[endpoint]).terminate, vm_id)
        for instance_id in actions.drain:
            self._safely(self.vmdb.request_stop, instance_id, False)
        self.log.info("stalled %d, closed %d, orphans terminated %d, drained %d",
                      len(actions.stall), len(actions.close), len(actions.terminate), len(actions.drain))

    def _safely(self, fn, *args) -> None:
        try:
            fn(*args)
        except (DriverError, VMDiracError, OSError) as e:  # the next cycle tries again
            self.log.warning("%s%s failed: %s", getattr(fn, "__name__", fn), args, e)
