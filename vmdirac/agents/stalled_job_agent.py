"""StalledJobAgent: jobs whose pilot went silent.

Running with no heartbeat for ``StalledTime`` -> Stalled; Stalled for ``FailedTime`` -> Failed
(Killed if the user had asked to kill it); Matched for ``MatchedTime`` without starting ->
rescheduled (its pilot died before running it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from vmdirac.core.agent import Agent, AgentOptions
from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import VMDiracError
from vmdirac.logic.jobs import JobLimits, JobStore
from vmdirac.services.wms_base import JobScheduling
from vmdirac.wms.job_status import JobStatus as S, MinorStatus as M


@dataclass(frozen=True)
class StalledJobOptions(AgentOptions):
    PollingTime: float = 120.0
    StalledTime: float = 2 * 3600        # DIRAC's StalledTimeHours = 2
    FailedTime: float = 6 * 3600         # DIRAC's FailedTimeHours = 6
    MatchedTime: float = 2 * 3600


@dataclass(frozen=True)
class Actions:
    stall: list[int]
    fail: list[int]
    reschedule: list[int]


def decide(running_silent: list[int], stalled_long: list[int], matched_long: list[int]) -> Actions:
    """Pure: which job gets which action (a job never gets two in one cycle)."""
    seen: set[int] = set()
    out: dict[str, list[int]] = {"stall": [], "fail": [], "reschedule": []}
    for name, ids in (("fail", stalled_long), ("stall", running_silent), ("reschedule", matched_long)):
        for job_id in ids:
            if job_id not in seen:
                seen.add(job_id)
                out[name].append(job_id)
    return Actions(**out)


class StalledJobAgent(Agent):
    system = "WorkloadManagement"
    name = "StalledJobAgent"
    Options = StalledJobOptions

    def initialize(self) -> None:
        def shares() -> dict[str, float]:
            return {n: g.job_share for n, g in self.context.config.current.registry.groups.items()}

        self.store = JobStore(self.context.engine, shares)
        self.store.create_tables()

    def execute(self) -> None:
        opts = self.options
        now = utcnow()
        db = self.store.jobdb
        actions = decide(
            db.stale(S.RUNNING, "HeartBeatTime", now - dt.timedelta(seconds=opts.StalledTime)),
            db.stale(S.STALLED, "LastUpdateTime", now - dt.timedelta(seconds=opts.FailedTime)),
            db.stale(S.MATCHED, "LastUpdateTime", now - dt.timedelta(seconds=opts.MatchedTime)),
        )
        done = {"stalled": 0, "failed": 0, "killed": 0, "rescheduled": 0}
        for job_id in actions.stall:
            done["stalled"] += self._set(job_id, S.STALLED, M.STALLED_NO_HEARTBEAT, (S.RUNNING,))
        for job_id in actions.fail:
            if db.has_command(job_id, "Kill"):
                done["killed"] += self._set(job_id, S.KILLED, M.KILLED_BY_USER, (S.STALLED,))
            else:
                done["failed"] += self._set(job_id, S.FAILED, M.STALLED_TOO_LONG, (S.STALLED,))
        if actions.reschedule:
            limits = JobLimits(max_rescheduling=self.context.config.current.options(
                JobScheduling, "Operations/Defaults/JobScheduling").MaxRescheduling)
            result = self.store.reschedule(None, actions.reschedule, limits, source="StalledJobAgent",
                                           minor=M.MATCHED_TOO_LONG)
            done["rescheduled"] = len(result["Successful"])
            for job_id, reason in result["Failed"].items():
                self.log.warning("job %s not rescheduled: %s", job_id, reason)
        self.log.info("stalled %(stalled)d, failed %(failed)d, killed %(killed)d, rescheduled %(rescheduled)d", done)

    def _set(self, job_id: int, status: S, minor: str, expect: tuple) -> int:
        try:
            self.store.jobdb.set_status(job_id, status, minor, source="StalledJobAgent", expect=expect,
                                        attributes={"EndExecTime": utcnow()} if status != S.STALLED else None)
            return 1
        except VMDiracError as e:  # it moved meanwhile (a heartbeat came back): nothing to do
            self.log.info("job %d left alone: %s", job_id, e.message)
            return 0
