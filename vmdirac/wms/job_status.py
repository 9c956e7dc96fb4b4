"""DIRAC's job states, minor statuses, and the table of allowed transitions.

DIRAC silently keeps the old state on an illegal transition; we raise ``IllegalTransition``.
"""

from __future__ import annotations

from enum import StrEnum

from vmdirac.core.exceptions import IllegalTransition, InvalidArgument


class JobStatus(StrEnum):
    RECEIVED = "Received"
    CHECKING = "Checking"
    WAITING = "Waiting"
    MATCHED = "Matched"
    RUNNING = "Running"
    STALLED = "Stalled"
    COMPLETING = "Completing"
    DONE = "Done"
    COMPLETED = "Completed"
    FAILED = "Failed"
    KILLED = "Killed"
    RESCHEDULED = "Rescheduled"
    DELETED = "Deleted"


S = JobStatus

# Each edge as DESIGN.md gives it; a comment where the reason is not obvious.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.RECEIVED: frozenset({S.CHECKING, S.WAITING, S.FAILED, S.KILLED, S.DELETED}),
    S.CHECKING: frozenset({S.WAITING, S.RESCHEDULED, S.FAILED, S.KILLED, S.DELETED}),
    S.WAITING: frozenset({S.MATCHED, S.RESCHEDULED, S.KILLED, S.DELETED}),
    # A matched job whose pilot never starts it is rescheduled by the StalledJobAgent.
    S.MATCHED: frozenset({S.RUNNING, S.FAILED, S.RESCHEDULED, S.KILLED}),
    S.RUNNING: frozenset({S.STALLED, S.COMPLETING, S.DONE, S.FAILED, S.RESCHEDULED, S.KILLED}),
    # A stalled job whose heartbeats come back is Running again.
    S.STALLED: frozenset({S.RUNNING, S.FAILED, S.KILLED}),
    S.COMPLETING: frozenset({S.DONE, S.COMPLETED, S.FAILED, S.STALLED, S.KILLED}),
    S.COMPLETED: frozenset({S.DONE, S.FAILED}),
    S.RESCHEDULED: frozenset({S.WAITING, S.RECEIVED, S.FAILED, S.KILLED, S.DELETED}),
    S.DONE: frozenset({S.DELETED}),
    S.KILLED: frozenset({S.DELETED}),
    S.FAILED: frozenset({S.RESCHEDULED, S.DELETED}),
    S.DELETED: frozenset(),
}

FINAL = frozenset({S.DONE, S.COMPLETED, S.FAILED, S.KILLED, S.DELETED})
# States in which a job occupies a pilot (and sends heartbeats).
ACTIVE = frozenset({S.MATCHED, S.RUNNING, S.STALLED, S.COMPLETING})


def parse_status(value: str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise InvalidArgument(f"unknown job status {value!r}; known: {', '.join(s.value for s in S)}") from None


def check_transition(job_id: int, current: str, new: str) -> None:
    """Raise ``IllegalTransition`` unless ``current -> new`` is allowed (same state is allowed:
    it only changes the minor or application status)."""
    cur, nxt = parse_status(current), parse_status(new)
    if cur == nxt or nxt in TRANSITIONS[cur]:
        return
    raise IllegalTransition(f"job {job_id}: {cur} -> {nxt} is not allowed", job_id=job_id)


class MinorStatus:
    """The minor statuses DIRAC users know from the portal's Logging info."""

    JOB_ACCEPTED = "Job accepted"
    JOB_SANITY = "JobSanity"
    JOB_SCHEDULING = "JobScheduling"
    PILOT_AGENT_SUBMISSION = "Pilot Agent Submission"
    ASSIGNED = "Assigned"
    DOWNLOADING_INPUTS = "Downloading Inputs"
    APPLICATION = "Application"
    UPLOADING_OUTPUTS = "Uploading Outputs"
    EXECUTION_COMPLETE = "Execution Complete"
    MARKED_FOR_TERMINATION = "Marked for termination"
    KILLED_BY_USER = "Killed by user"
    STALLED_NO_HEARTBEAT = "Job stalled: no heartbeat"
    STALLED_TOO_LONG = "Stalled for too long"
    MATCHED_TOO_LONG = "Matched for too long: pilot did not start it"
    RESCHEDULED = "Job Rescheduled"
    MAX_RESCHEDULING = "Maximum of reschedulings reached"
