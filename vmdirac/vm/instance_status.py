"""VM instance states (VMDIRAC's) and the transitions allowed between them.

Every transition is recorded in the instance's history with its time and reason; an illegal one
raises ``IllegalTransition`` (VMDIRAC silently ignored them).
"""

from __future__ import annotations

from enum import StrEnum

from vmdirac.core.exceptions import IllegalTransition, InvalidArgument


class InstanceStatus(StrEnum):
    NEW = "New"                          # in the DB, the driver not yet called
    SUBMITTED = "Submitted"              # the endpoint accepted the boot request
    WAIT_SSH_CONTEXT = "Wait_ssh_context"  # booted plain image, waiting for SSH to contextualize
    CONTEXTUALIZING = "Contextualizing"  # contextualization running
    RUNNING = "Running"                  # the VM Monitor declared itself
    STOPPING = "Stopping"                # asked to stop: drains, then halts
    HALTED = "Halted"                    # gone (halted by itself, terminated, or never booted)
    STALLED = "Stalled"                  # no heartbeat for the stalling interval
    ERROR = "Error"                      # the endpoint refused or lost it


I = InstanceStatus

TRANSITIONS: dict[InstanceStatus, frozenset[InstanceStatus]] = {
    # A New instance the operator stops is simply Halted; a refused boot is Error.
    I.NEW: frozenset({I.SUBMITTED, I.HALTED, I.ERROR}),
    # Images with cloud-init go straight to Running; plain images wait for SSH first.
    I.SUBMITTED: frozenset({I.WAIT_SSH_CONTEXT, I.CONTEXTUALIZING, I.RUNNING, I.STOPPING, I.HALTED,
                            I.STALLED, I.ERROR}),
    I.WAIT_SSH_CONTEXT: frozenset({I.CONTEXTUALIZING, I.STOPPING, I.HALTED, I.STALLED, I.ERROR}),
    I.CONTEXTUALIZING: frozenset({I.RUNNING, I.STOPPING, I.HALTED, I.STALLED, I.ERROR}),
    I.RUNNING: frozenset({I.STOPPING, I.HALTED, I.STALLED, I.ERROR}),
    I.STOPPING: frozenset({I.HALTED, I.STALLED, I.ERROR}),
    # Heartbeats that come back make a Stalled VM Running again (a network partition healed).
    I.STALLED: frozenset({I.RUNNING, I.STOPPING, I.HALTED, I.ERROR}),
    I.ERROR: frozenset({I.HALTED}),
    I.HALTED: frozenset(),
}

FINAL = frozenset({I.HALTED})
# States in which a VM exists (or may exist) at its endpoint and counts against caps.
ALIVE = frozenset({I.NEW, I.SUBMITTED, I.WAIT_SSH_CONTEXT, I.CONTEXTUALIZING, I.RUNNING, I.STOPPING, I.STALLED})
# States in which a VM is still coming up (booting capacity the scheduler counts as "on its way").
BOOTING = frozenset({I.NEW, I.SUBMITTED, I.WAIT_SSH_CONTEXT, I.CONTEXTUALIZING})


def parse_instance_status(value: str) -> InstanceStatus:
    try:
        return InstanceStatus(value)
    except ValueError:
        raise InvalidArgument(f"unknown instance status {value!r}; known: "
                              f"{', '.join(s.value for s in I)}") from None


def check_transition(instance_id: int, current: str, new: str) -> None:
    cur, nxt = parse_instance_status(current), parse_instance_status(new)
    if cur == nxt or nxt in TRANSITIONS[cur]:
        return
    raise IllegalTransition(f"instance {instance_id}: {cur} -> {nxt} is not allowed", instance_id=instance_id)
