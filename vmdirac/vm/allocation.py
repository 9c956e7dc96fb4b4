"""The VM Scheduler's decision: how many VMs to boot for each pod, and where. Pure.

Elastic pods boot for waiting work that their VMs could run: with ``CPUPerInstance`` = 0 one
slot's worth of VM per waiting job, otherwise one VM per ``CPUPerInstance`` seconds of waiting
CPU (the average job CPU balances efficiency and wall time; a very large value packs work into
few VMs). Work that VMs already booting, or running with free slots, will take is not booted for
again. Static pods keep ``StaticInstances`` alive. Caps apply per pod, per endpoint and per
cycle; endpoints are chosen by priority, then free capacity, skipping those backed off.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class PodDemand:
    pod: str
    policy: str                    # Elastic | Static
    endpoints: tuple[str, ...]
    slots_per_vm: int
    cpu_per_instance: float
    max_instances: int
    max_boots_per_cycle: int
    static_instances: int = 0
    waiting_jobs: int = 0          # waiting jobs this pod's VMs could run
    waiting_cpu: float = 0.0       # their summed CPU time, seconds
    booting: int = 0               # VMs New..Contextualizing
    free_slots: int = 0            # free slots of Running VMs (slots - jobs)
    alive: int = 0                 # every VM that is not Halted
    eligible: frozenset[str] = field(default_factory=frozenset)  # endpoints with work it can run


@dataclass(frozen=True)
class EndpointCapacity:
    name: str
    max_instances: int
    alive: int
    priority: int = 1
    backed_off: bool = False

    @property
    def free(self) -> int:
        return max(0, self.max_instances - self.alive)


@dataclass(frozen=True)
class Boot:
    pod: str
    endpoint: str


def wanted(d: PodDemand) -> int:
    """How many more VMs the pod needs, before any cap."""
    if d.policy == "Static":
        return max(0, d.static_instances - d.alive)
    if d.waiting_jobs <= 0:
        return 0
    slots = max(1, d.slots_per_vm)
    # Work already on its way to a VM: free slots of running VMs and all slots of booting ones.
    uncovered_jobs = max(0, d.waiting_jobs - d.free_slots - d.booting * slots)
    if uncovered_jobs == 0:
        return 0
    if d.cpu_per_instance > 0:
        share = uncovered_jobs / d.waiting_jobs
        return max(1, math.ceil(d.waiting_cpu * share / d.cpu_per_instance))
    return math.ceil(uncovered_jobs / slots)


def decide(demands: list[PodDemand], endpoints: dict[str, EndpointCapacity]) -> list[Boot]:
    """The boots of this cycle (at most the caps allow); pods in order, so callers sort them."""
    room = {name: ep.free for name, ep in endpoints.items()}
    boots: list[Boot] = []
    for d in demands:
        n = min(wanted(d), max(0, d.max_instances - d.alive), d.max_boots_per_cycle)
        candidates = [e for e in d.endpoints if e in endpoints and not endpoints[e].backed_off
                      and (d.policy == "Static" or not d.eligible or e in d.eligible)]
        for _ in range(n):
            usable = [e for e in candidates if room[e] > 0]
            if not usable:
                break
            best = max(usable, key=lambda e: (endpoints[e].priority, room[e], -d.endpoints.index(e)))
            room[best] -= 1
            boots.append(Boot(d.pod, best))
    return boots


def after_boots(demands: list[PodDemand], endpoints: dict[str, EndpointCapacity], booted: list[Boot],
                backed_off: set[str]) -> tuple[list[PodDemand], dict[str, EndpointCapacity]]:
    """The state to decide again from, within one cycle, once ``booted`` went through and the
    endpoints in ``backed_off`` failed: so the boots a failing endpoint could not take go to the
    pod's other endpoints in the same cycle, within the same caps."""
    per_pod = Counter(b.pod for b in booted)
    per_endpoint = Counter(b.endpoint for b in booted)
    demands = [replace(d, booting=d.booting + per_pod[d.pod], alive=d.alive + per_pod[d.pod],
                       max_boots_per_cycle=max(0, d.max_boots_per_cycle - per_pod[d.pod])) for d in demands]
    endpoints = {name: replace(ep, alive=ep.alive + per_endpoint[name], backed_off=ep.backed_off or name in backed_off)
                 for name, ep in endpoints.items()}
    return demands, endpoints


@dataclass
class Backoff:
    """Growing delay for an endpoint that keeps failing: base * 2^(failures-1), capped."""

    base: float = 60.0
    cap: float = 3600.0
    failures: dict[str, int] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)

    def failed(self, endpoint: str, now: float) -> float:
        n = self.failures.get(endpoint, 0) + 1
        self.failures[endpoint] = n
        delay = min(self.cap, self.base * 2 ** (n - 1))
        self.until[endpoint] = now + delay
        return delay

    def succeeded(self, endpoint: str) -> None:
        self.failures.pop(endpoint, None)
        self.until.pop(endpoint, None)

    def backed_off(self, endpoint: str, now: float) -> bool:
        return self.until.get(endpoint, 0.0) > now
