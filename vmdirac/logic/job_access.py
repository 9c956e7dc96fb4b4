"""Who may see and act on which job: the owner, or an Operator/JobAdministrator of its VO."""

from __future__ import annotations

from vmdirac.core.exceptions import NotAuthorized
from vmdirac.core.export import Caller

ADMIN_PROPERTIES = ("JobAdministrator", "Operator")


def pilot_identity(caller: Caller) -> str:
    """What a job records as the pilot that matched it (``MatchedBy``): the identity, and for a
    per-VM credential its instance too, since all VMs share the pilot identity."""
    return caller.dn if caller.instance_id is None else f"{caller.dn}#instance-{caller.instance_id}"


def runs_job(caller: Caller, job: dict) -> bool:
    """Whether ``caller`` is the pilot that matched ``job`` (which has ``MatchedBy``)."""
    return bool(job.get("MatchedBy")) and job["MatchedBy"] == pilot_identity(caller)


def is_job_admin(caller: Caller) -> bool:
    return caller.has(*ADMIN_PROPERTIES)


def visible_filter(caller: Caller) -> dict[str, tuple]:
    """The restriction to add to any job selection made for ``caller``."""
    if is_job_admin(caller):
        # A host with the property serves every VO; a person only their own.
        return {} if caller.is_host or not caller.vo else {"VO": (caller.vo,)}
    return {"Owner": (caller.username,)}


def may_access(caller: Caller, job: dict) -> bool:
    if is_job_admin(caller):
        return caller.is_host or not caller.vo or job.get("VO") == caller.vo
    return bool(caller.username) and job.get("Owner") == caller.username


def check_access(caller: Caller, job_id: int, job: dict | None) -> None:
    """``NotAuthorized`` unless ``caller`` may see job ``job_id`` (a missing job says the same,
    so that ids of other users' jobs cannot be probed)."""
    if job is None or not may_access(caller, job):
        raise NotAuthorized(f"job {job_id} does not exist or is not yours", job_id=job_id)
