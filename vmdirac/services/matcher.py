"""WorkloadManagement/Matcher: gives a pilot one job that fits its resource, atomically.

No state in the process: the claim is made in the DB (TaskQueueDB.claim_many), so any number of
Matcher processes on one MySQL never give a job twice. Requests arriving together are served by
one transaction (``MatchQueue``, a group commit), each answered only once it is committed. A
pilot credential takes jobs of its VO only; a pilot started with a user proxy takes only that
user's jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from sqlalchemy.engine import Connection

from vmdirac.core.exceptions import InvalidArgument
from vmdirac.core.group_commit import GroupCommit
from vmdirac.core.export import Caller, export
from vmdirac.db.job_db import MatchedJob
from vmdirac.logic.job_access import pilot_identity
from vmdirac.logic.jobs import JobStore
from vmdirac.services.wms_base import NEW_JOBS, WMSService
from vmdirac.wms.matching import ResourceDescription

log = logging.getLogger(__name__)

PILOTS = ("GenericPilot", "NormalUser")
MAX_WAIT = 30.0
RECHECK = 1.0  # seconds between DB re-checks of a long poll (submissions of other processes)


def restrict(caller: Caller, res: ResourceDescription) -> ResourceDescription:
    """What the caller's credential allows, whatever the resource description says."""
    if caller.instance_id is not None:  # a VM: its own VO and instance, whatever it claims
        return replace(res, vo=caller.vo, instance_id=str(caller.instance_id))
    if caller.has("GenericPilot"):
        return res if caller.is_host else replace(res, vo=caller.vo)
    return replace(res, owner=caller.username, owner_group=caller.group, vo=caller.vo)


@dataclass(frozen=True)
class MatchRequest:
    """One pilot's request: what it may take, and what its job records about it."""

    res: ResourceDescription
    matched_by: str
    pilot_reference: str

    @classmethod
    def of(cls, caller: Caller, res: ResourceDescription) -> MatchRequest:
        return cls(res, pilot_identity(caller)[:255], (res.pilot_reference or res.instance_id)[:255])

    def matched(self, job_id: int) -> MatchedJob:
        params = {k: v for k, v in (("Endpoint", self.res.endpoint), ("Image", self.res.image),
                                    ("InstanceID", self.res.instance_id)) if v}
        return MatchedJob(job_id, self.matched_by, self.pilot_reference, self.res.site[:128], params)


def match_batch(store: JobStore, conn: Connection, requests: list[MatchRequest]) -> list[dict | None]:
    """Inside one transaction: a different job for each request (``None`` where nothing fits),
    claimed and marked Matched, with the few statements of one match whatever their number."""
    claims = store.tqdb.claim_many(conn, [r.res for r in requests])
    taken = [(r, c) for r, c in zip(requests, claims) if c is not None]
    if not taken:
        return [None] * len(requests)
    jobs = store.jobdb.mark_matched(conn, [r.matched(c.job_id) for r, c in taken])
    return [None if c is None else {**jobs[c.job_id], "TQId": c.tq_id} for c in claims]


class MatchQueue(GroupCommit[MatchRequest, "dict | None"]):
    """Group commit of matches (``core.group_commit``): requests arriving together are served
    by one transaction, one claim and one statement per kind for all of them. Each request gets
    its own job and is answered only once that transaction is committed.

    A batch that fails is served again one request per transaction, so that one bad job (say,
    no longer Waiting) fails its own request, loudly, and not its neighbours'."""

    def __init__(self, store: JobStore, match: Callable[[Connection, list[MatchRequest]], list[dict | None]],
                 executor: ThreadPoolExecutor, writers: int, max_batch: int = 64) -> None:
        super().__init__(self._serve, writers, max_batch, executor)
        self.store = store
        self.match = match                     # match_batch, inside a transaction

    def _serve(self, requests: list[MatchRequest]) -> list[dict | None | Exception]:
        run = self.store.jobdb.run
        try:
            return run(lambda conn: self.match(conn, requests))
        except Exception as e:  # noqa: BLE001 (each request is served again below, and fails alone)
            if len(requests) == 1:
                return [e]
            log.warning("a batch of %d matches failed (%s); serving them one by one", len(requests), e)
        out: list[dict | None | Exception] = []
        for request in requests:
            try:
                out.append(run(lambda conn, one=request: self.match(conn, [one]))[0])
            except Exception as e:  # noqa: BLE001 (this request's failure, raised to its caller)
                out.append(e)
        return out


class MatcherService(WMSService):
    name = "Matcher"

    def initialize(self) -> None:
        super().initialize()
        # Matches block on the DB: a pool of their own, as large as the server's, rather than
        # asyncio's small default one (min(32, CPUs + 4)).
        self.executor = ThreadPoolExecutor(max_workers=self.context.local.MaxWorkers, thread_name_prefix="matcher")
        # SQLite has one writer at a time: a second batch would only wait for the lock (in the
        # busy handler's sleeps); MySQL overlaps two batches' round trips.
        writers = 1 if self.store.jobdb.backend == "sqlite" else 2
        self.matches = MatchQueue(self.store, lambda conn, requests: self._match_batch(conn, requests),
                                  self.executor, writers)
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
        request = MatchRequest.of(caller, restrict(caller, ResourceDescription.from_wire(resourceDescription)))
        deadline = time.monotonic() + waitSeconds
        while True:
            got = await self.matches.submit(request)
            left = deadline - time.monotonic()
            if got is not None or left <= 0 or self.context.stopping:
                return got
            await self.context.notifier.wait(NEW_JOBS, min(RECHECK, left))

    def _match_batch(self, conn: Connection, requests: list[MatchRequest]) -> list[dict | None]:
        return match_batch(self.store, conn, requests)

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
