"""The reconciler's decision: what to do about silent, lost, orphaned and old VMs. Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from vmdirac.drivers.base import INSTANCE_TAG, Node, NodeState
from vmdirac.vm.instance_status import ALIVE, InstanceStatus as I


@dataclass(frozen=True)
class Known:
    """What reconciling needs of a DB instance."""

    instance_id: int
    name: str
    endpoint: str
    vm_id: str
    status: str
    last_update: dt.datetime
    started: dt.datetime | None
    pod: str


@dataclass
class Actions:
    stall: list[int] = field(default_factory=list)            # -> Stalled, terminate at endpoint
    terminate: list[tuple[str, str]] = field(default_factory=list)  # (endpoint, vm_id) orphans
    close: list[int] = field(default_factory=list)            # -> Halted: gone at the endpoint
    drain: list[int] = field(default_factory=list)            # past max lifetime -> stop


def decide(known: list[Known], nodes: dict[str, list[Node]], now: dt.datetime, stalling: float,
           boot_grace: float, max_lifetime: dict[str, float], listed_at: dt.datetime | None = None) -> Actions:
    """Pure. ``nodes``: for each endpoint listed this cycle (endpoints that failed to list are
    absent, so nothing is closed or orphaned on their account). ``listed_at``: when the listing
    began (default ``now``). The caller lists the endpoints *before* reading ``known``: a VM
    booted meanwhile then has its row (written before any boot) in ``known``, so it is never
    taken for an orphan; and an instance that changed after ``listed_at`` (submitted, or heard
    from) is not closed for missing from a listing older than it."""
    listed_at = listed_at or now
    a = Actions()
    by_name = {k.name: k for k in known}
    for k in known:
        if k.status not in ALIVE:
            continue
        silence = (now - k.last_update).total_seconds()
        if k.status == I.NEW:
            # The scheduler died between the record and the boot: the VM, if any, is an orphan
            # once this instance is closed.
            if silence > boot_grace:
                a.close.append(k.instance_id)
            continue
        limit = boot_grace if k.status == I.SUBMITTED else stalling
        if k.status != I.STALLED and silence > limit:
            a.stall.append(k.instance_id)
            continue
        listed = nodes.get(k.endpoint)
        if listed is not None:
            # A VM whose id never reached the DB (the scheduler died after the boot) is found by its tag.
            node = next((n for n in listed if (n.vm_id == k.vm_id if k.vm_id else n.tags.get(INSTANCE_TAG) == k.name)), None)
            if node is None or node.state in (NodeState.TERMINATED, NodeState.STOPPED):
                if k.last_update < listed_at:
                    a.close.append(k.instance_id)
                continue
        lifetime = max_lifetime.get(k.pod, 0.0)
        if lifetime and k.status == I.RUNNING and k.started and (now - k.started).total_seconds() > lifetime:
            a.drain.append(k.instance_id)
    for endpoint, listed in nodes.items():
        for node in listed:
            owner = by_name.get(node.tags.get(INSTANCE_TAG, ""))
            alive_node = node.state not in (NodeState.TERMINATED,)
            if alive_node and (owner is None or owner.status not in ALIVE):
                a.terminate.append((endpoint, node.vm_id))
    return a
