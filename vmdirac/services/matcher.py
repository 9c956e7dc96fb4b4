"""WorkloadManagement/Matcher: gives a pilot one job that fits its resource, atomically.

No state in the process: the claim is made in the DB (TaskQueueDB.claim), so any number of
Matcher processes on one MySQL never give a job twice. A pilot credential takes jobs of its VO
only; a pilot started with a user proxy takes only that user's jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import Connection

from vmdirac.core.exceptions import InvalidArgument
from vmdirac.core.export import Caller, export
from vmdirac.logic.job_access import pilot_identity
from vmdirac.services.wms_base import NEW_JOBS, WMSService
from vmdirac.wms.matching import ResourceDescription

log = logging.getLogger(__name__)

PILOTS = ("GenericPilot", "NormalUser")
MAX_WAIT = 30.0
RECHECK = 1.0  # seconds between DB re-checks of a long poll (submissions of other processes)


def restrict(caller: Caller, res: ResourceDescription) -> ResourceDescription:
    """What the caller's credential allows, whatever the resource description says."""
    from dataclasses import replace

    if caller.instance_id is not None:  # a VM: its own VO and instance, whatever it claims
        return replace(res, vo=caller.vo, instance_id=str(caller.instance_id))
    if caller.has("GenericPilot"):
        return res if caller.is_host else replace(res, vo=caller.vo)
    return replace(res, owner=caller.username, owner_group=caller.group, vo=caller.vo)


class MatcherService(WMSService):
    name = "Matcher"

    def initialize(self) -> None:
        super().initialize()
        # Matches block on the DB: a pool of their own, as large as the server's, rather than
        # asyncio's small default one (min(32, CPUs + 4)).
        self.executor = ThreadPoolExecutor(max_workers=self.context.local.MaxWorkers, thread_name_prefix="matcher")
        self.context.notifier.subscribe(NEW_JOBS, self.store.tqdb.clear_cache)

    @export(properties=PILOTS)
    async def requestJob(self, caller: Caller, resourceDescription: dict, waitSeconds: float = 0) -> dict | None:
        """One job for this resource, now ``Matched / Assigned``; ``None`` when nothing fits.

        ``waitSeconds`` (our extension; DIRAC's clients omit it) makes it a long poll: with
        nothing to match now, the call answers as soon as a job that fits arrives, or after that
        many seconds (at most 30). Submissions in this process wake it at once; those made in
        other processes are seen by a re-check every second.
        """
        if not 0 <= waitSeconds <= MAX_WAIT:
            raise InvalidArgument(f"waitSeconds must be between 0 and {MAX_WAIT}")
        res = restrict(caller, ResourceDescription.from_wire(resourceDescription))
        deadline = time.monotonic() + waitSeconds
        while True:
            got = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.store.jobdb.run, lambda conn: self._match(conn, caller, res))
            left = deadline - time.monotonic()
            if got is not None or left <= 0 or self.context.stopping:
                return got
            await self.context.notifier.wait(NEW_JOBS, min(RECHECK, left))

    def _match(self, conn: Connection, caller: Caller, res: ResourceDescription) -> dict | None:
        claim = self.store.tqdb.claim(conn, res)
        if claim is None:
            return None
        db = self.store.jobdb
        attrs = {"MatchedBy": pilot_identity(caller)[:255],
                 "PilotReference": (res.pilot_reference or res.instance_id)[:255]}
        if res.site:
            attrs["Site"] = res.site[:128]
        match = db.mark_matched(conn, claim.job_id, attrs)
        params = {k: v for k, v in (("Endpoint", res.endpoint), ("Image", res.image),
                                    ("InstanceID", res.instance_id)) if v}
        if params:
            db.set_parameters(claim.job_id, params, conn=conn)
        return {**match, "TQId": claim.tq_id}

    @export(properties=(*PILOTS, "JobAdministrator", "Operator"))
    def getMatchingTaskQueues(self, caller: Caller, resourceDescription: dict) -> dict:
        """Task queues this resource could take jobs from, with requirements and job counts."""
        res = ResourceDescription.from_wire(resourceDescription)
        if not caller.has("JobAdministrator", "Operator"):
            res = restrict(caller, res)
        return {str(k): v for k, v in self.store.tqdb.matching_queues(res).items()}

    @export(properties=("JobAdministrator", "Operator"))
    def getActiveTaskQueues(self, caller: Caller) -> dict:
        return self.getMatchingTaskQueues(caller, {})
