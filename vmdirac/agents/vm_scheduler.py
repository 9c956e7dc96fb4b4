"""VirtualMachineScheduler: boots VMs on the pods' endpoints for waiting work.

Gather (waiting work each pod's VMs could run, VMs per pod and endpoint), decide
(``vm.allocation.decide``, pure), act: every VM is written to the DB as New *before* its driver
is called, so none is ever booted unrecorded; a failing endpoint is backed off with a growing
delay while the pod's other endpoints take its VMs. New jobs wake the agent at once.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmdirac.contexts import VMContext, boot_user_data, make_context
from vmdirac.contexts.ssh import SSHError, SSHTarget, SSHUnreachable, contextualize, probe
from vmdirac.core.agent import Agent, AgentOptions
from vmdirac.core.exceptions import VMDiracError
from vmdirac.core.tls import ca_files
from vmdirac.db.endpoint_status_db import EndpointStatusDB
from vmdirac.db.task_queue_db import TaskQueueDB
from vmdirac.db.virtual_machine_db import VirtualMachineDB
from vmdirac.drivers.base import DEPLOYMENT_TAG, INSTANCE_TAG, BootRequest, Driver, DriverError, DriverPool
from vmdirac.logic.vm_credentials import issue_credential
from vmdirac.services.wms_base import NEW_JOBS
from vmdirac.vm import config as vmconfig
from vmdirac.vm.config import pod_resource
from vmdirac.vm.allocation import Backoff, Boot, EndpointCapacity, PodDemand, after_boots, decide
from vmdirac.vm.instance_status import ALIVE, BOOTING, InstanceStatus as I

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VMSchedulerOptions(AgentOptions):
    PollingTime: float = 60.0
    BackoffSeconds: float = 60.0
    MaxBackoffSeconds: float = 3600.0
    CredentialHours: float = 24.0


def state_dir(context, endpoint: str) -> Path:
    return context.paths.root / "clouds" / endpoint.replace("/", "_")


class VirtualMachineScheduler(Agent):
    system = "WorkloadManagement"
    name = "VirtualMachineScheduler"
    Options = VMSchedulerOptions

    def initialize(self) -> None:
        self.vmdb = VirtualMachineDB(self.context.engine)
        self.vmdb.create_tables()
        self.tqdb = TaskQueueDB(self.context.engine)
        self.tqdb.create_tables()
        self.endpoint_status = EndpointStatusDB(self.context.engine)
        self.endpoint_status.create_tables()
        # Endpoints the DB says are failing (an earlier run's): cleared at their first success.
        self.failing = {name for name, st in self.endpoint_status.states().items() if st.failures}
        opts = self.options
        self.backoff = Backoff(opts.BackoffSeconds, opts.MaxBackoffSeconds)
        self.pool = DriverPool(self.vmdb.deployment_id, lambda name: state_dir(self.context, name))
        self.context.notifier.subscribe(NEW_JOBS, self.wake)

    def driver(self, endpoint: vmconfig.Endpoint) -> Driver:
        return self.pool.get(endpoint)

    @property
    def drivers(self) -> dict[str, Driver]:
        return self.pool.drivers

    # ------------------------------------------------------------ gather

    def gather(self, snap) -> tuple[list[PodDemand], dict[str, EndpointCapacity], dict, dict]:
        pods = {n: p for n, p in vmconfig.pods(snap).items() if p.options.Enabled}
        endpoints = vmconfig.endpoints(snap)
        instances = self.vmdb.instances(statuses=sorted(ALIVE))
        now = time.monotonic()
        pods_in_order = sorted(pods.values(), key=lambda p: p.name)
        asked = [(pod.name, ep) for pod in pods_in_order for ep in pod.options.Endpoints]
        work = self.tqdb.waiting_work([pod_resource(pods[p], endpoints[ep]) for p, ep in asked])
        runnable: dict[str, dict[str, frozenset[int]]] = {}
        for (pod_name, ep_name), tq_ids in zip(asked, work.matches):
            runnable.setdefault(pod_name, {})[ep_name] = tq_ids
        by_pod: dict[str, list] = {}
        per_endpoint: dict[str, int] = {}
        for inst in instances:
            by_pod.setdefault(inst.pod, []).append(inst)
            per_endpoint[inst.endpoint] = per_endpoint.get(inst.endpoint, 0) + 1
        demands = []
        for pod in pods_in_order:
            by_endpoint = runnable.get(pod.name, {})
            eligible = {ep for ep, tq_ids in by_endpoint.items() if tq_ids}
            waiting_jobs, waiting_cpu = work.of(set().union(*by_endpoint.values()) if by_endpoint else set())
            mine = by_pod.get(pod.name, [])
            image = endpoints[pod.options.Endpoints[0]].image(pod.options.Image) if pod.options.Endpoints else None
            slots = pod.options.JobSlots or (image.Cores if image else 1)
            demands.append(PodDemand(
                pod=pod.name, policy=pod.options.Policy, endpoints=tuple(pod.options.Endpoints),
                slots_per_vm=slots, cpu_per_instance=pod.options.CPUPerInstance,
                max_instances=pod.options.MaxInstances, max_boots_per_cycle=pod.options.MaxBootsPerCycle,
                static_instances=pod.options.StaticInstances,
                waiting_jobs=waiting_jobs, waiting_cpu=waiting_cpu,
                booting=sum(1 for i in mine if i.status in BOOTING),
                free_slots=sum(max(0, slots - i.jobs) for i in mine if i.status == I.RUNNING),
                alive=len(mine), eligible=frozenset(eligible)))
        capacity = {
            name: EndpointCapacity(name, ep.options.MaxInstances, per_endpoint.get(name, 0),
                                   ep.options.Priority, self.backoff.backed_off(name, now))
            for name, ep in endpoints.items()}
        return demands, capacity, pods, endpoints

    # ------------------------------------------------------------ act

    def execute(self) -> None:
        snap = self.context.config.current
        self.vmdb.sync_pods(vmconfig.pods(snap), vmconfig.endpoints(snap))
        demands, capacity, pods, endpoints = self.gather(snap)
        booted: list[Boot] = []
        wanted = failed = 0
        for _ in range(2):  # a second round gives what a failing endpoint could not take to the others
            boots = decide(demands, capacity)
            wanted = max(wanted, len(booted) + len(boots))
            done, failing = [], set()
            for boot in boots:
                if self.stopping:
                    break
                if boot.endpoint in failing:
                    continue  # it failed earlier in this round
                if self.boot(boot, pods[boot.pod], endpoints[boot.endpoint], snap):
                    done.append(boot)
                else:
                    failed += 1
                    failing.add(boot.endpoint)
            booted += done
            if not failing or self.stopping:
                break
            demands, capacity = after_boots(demands, capacity, done, failing)
        if wanted or failed:
            self.log.info("booted %d VM(s), %d failed; wanted %d", len(booted), failed, wanted)
        self.contextualize_over_ssh(pods, endpoints, snap)

    def contextualize_over_ssh(self, pods: dict, endpoints: dict, snap) -> None:
        """Plain images (Context ssh): Submitted -> Wait_ssh_context until SSH answers, then
        Contextualizing while the files and the start script go over; the VM Monitor it starts
        then declares the VM Running. Refused keys or failing scripts are the VM's Error."""
        for inst in self.vmdb.instances(statuses=[I.SUBMITTED, I.WAIT_SSH_CONTEXT]):
            pod, endpoint = pods.get(inst.pod), endpoints.get(inst.endpoint)
            if pod is None or endpoint is None or self.stopping:
                continue
            image = endpoint.image(pod.options.Image)
            if image.Context != "ssh":
                continue
            if inst.status == I.SUBMITTED:
                self.vmdb.set_status(inst.instance_id, I.WAIT_SSH_CONTEXT, "waiting for SSH")
            host = (inst.public_ip or inst.private_ip).split(",")[0].strip()
            if not host:
                continue
            target = SSHTarget(host, user=image.SSHUser, port=image.SSHPort, key_file=image.SSHKeyFile,
                               known_hosts=image.SSHKnownHosts)
            try:
                probe(target)
            except SSHUnreachable:
                continue  # not up yet; the reconciler stalls it if it never comes
            except SSHError as e:
                self._context_failed(inst, endpoint, e)
                continue
            self.vmdb.set_status(inst.instance_id, I.CONTEXTUALIZING, f"contextualizing over SSH at {host}")
            try:
                credential = issue_credential(self.context, inst.instance_id, pod.options.PilotGroup,
                                              self.options.CredentialHours)
                ctx = self.vm_context(inst.instance_id, inst.name, pod, endpoint, credential, snap)
                root = image.SSHRemoteRoot.format(vm_id=inst.endpoint_vm_id,
                                                  state_dir=state_dir(self.context, endpoint.name))
                result = contextualize(target, ctx, root)
            except (SSHError, VMDiracError, OSError) as e:
                self._context_failed(inst, endpoint, e)
                continue
            self.log.info("instance %d contextualized over SSH at %s in %.1f s", inst.instance_id, host,
                          result.seconds)

    def _context_failed(self, inst, endpoint: vmconfig.Endpoint, err: Exception) -> None:
        reason = getattr(err, "message", None) or str(err)
        self.vmdb.set_error(inst.instance_id, f"SSH contextualization: {reason}")
        self.log.warning("instance %d: SSH contextualization failed: %s", inst.instance_id, reason)
        if inst.endpoint_vm_id:
            try:
                self.driver(endpoint).terminate(inst.endpoint_vm_id)
            except (DriverError, OSError) as e:
                self.log.warning("instance %d not terminated (the reconciler will): %s", inst.instance_id, e)

    def boot(self, boot: Boot, pod: vmconfig.Pod, endpoint: vmconfig.Endpoint, snap) -> bool:
        image = endpoint.image(pod.options.Image)
        instance_id, name = self.vmdb.new_instance(pod.name, pod.options.Image, endpoint.name, endpoint.site,
                                                   vo=pod.vo, cost_per_hour=image.CostPerHour)
        try:
            credential = issue_credential(self.context, instance_id, pod.options.PilotGroup, self.options.CredentialHours)
            user_data = boot_user_data(self.vm_context(instance_id, name, pod, endpoint, credential, snap), image.Context)
            node = self.driver(endpoint).boot(BootRequest(
                name, image, user_data, {DEPLOYMENT_TAG: self.vmdb.deployment_id(), INSTANCE_TAG: name}))
        except (DriverError, VMDiracError, OSError) as e:
            reason = getattr(e, "message", None) or str(e)
            self.vmdb.set_error(instance_id, f"{type(e).__name__}: {reason}")
            if isinstance(e, DriverError):
                delay = self.backoff.failed(endpoint.name, time.monotonic())
                self.failing.add(endpoint.name)
                self.endpoint_status.failed(endpoint.name, f"{type(e).__name__}: {reason}", delay)
                self.log.warning("endpoint %s failed (%s); backed off for %.0f s", endpoint.name, reason, delay)
            else:
                self.log.error("instance %d not booted: %s", instance_id, reason)
            return False
        self.backoff.succeeded(endpoint.name)
        if endpoint.name in self.failing:
            self.failing.discard(endpoint.name)
            self.endpoint_status.succeeded(endpoint.name)
        status = self.vmdb.set_submitted(instance_id, node.vm_id, list(node.public_ips), list(node.private_ips))
        if status == I.HALTED:  # an operator stopped it while it booted
            self.driver(endpoint).terminate(node.vm_id)
        self.log.info("instance %d (%s) of pod %s submitted to %s as %s", instance_id, name, pod.name,
                      endpoint.name, node.vm_id)
        return True

    def vm_context(self, instance_id: int, name: str, pod: vmconfig.Pod, endpoint: vmconfig.Endpoint,
                   credential: bytes, snap) -> VMContext:
        urls = {f"{system}/{service}": ([u] if isinstance(u, str) else list(u))
                for system, section in (snap.get("Systems") or {}).items()
                for service, u in ((section or {}).get("URLs") or {}).items()}
        image = endpoint.image(pod.options.Image)
        python = image.Python or (sys.executable if endpoint.options.Type == "local" else "")
        return make_context(instance_id, name, pod, endpoint, urls, credential, self.ca_pem(), python=python,
                            pilot_options=dict(pod.options.PilotOptions),
                            monitor_options=dict(pod.options.MonitorOptions))

    def ca_pem(self) -> bytes:
        """The CA certificates the VM must trust to talk to us."""
        location = Path(self.context.local.CACertificates or self.context.paths.ca_dir)
        return b"".join(f.read_bytes() for f in ca_files(location))
