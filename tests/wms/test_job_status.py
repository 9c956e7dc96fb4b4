"""The job state machine: DESIGN.md's table, checked exhaustively."""

from __future__ import annotations

import itertools

import pytest

from vmdirac.core.exceptions import IllegalTransition, InvalidArgument
from vmdirac.wms.job_status import TRANSITIONS, JobStatus as S, check_transition

ALLOWED = {
    "Received": "Checking Waiting Failed Killed Deleted",
    "Checking": "Waiting Rescheduled Failed Killed Deleted",
    "Waiting": "Matched Rescheduled Killed Deleted",
    "Matched": "Running Failed Rescheduled Killed",
    "Running": "Stalled Completing Done Failed Rescheduled Killed",
    "Stalled": "Running Failed Killed",
    "Completing": "Done Completed Failed Stalled Killed",
    "Completed": "Done Failed",
    "Rescheduled": "Waiting Received Failed Killed Deleted",
    "Done": "Deleted",
    "Killed": "Deleted",
    "Failed": "Rescheduled Deleted",
    "Deleted": "",
}


@pytest.mark.parametrize("current,new", list(itertools.product([s.value for s in S], repeat=2)))
def test_every_pair_follows_the_design(current, new):
    legal = current == new or new in ALLOWED[current].split()
    if legal:
        check_transition(7, current, new)
    else:
        with pytest.raises(IllegalTransition, match=f"job 7: {current} -> {new} is not allowed"):
            check_transition(7, current, new)


def test_table_covers_every_state():
    assert set(TRANSITIONS) == set(S)


def test_unknown_status_is_named():
    with pytest.raises(InvalidArgument, match="unknown job status 'Finished'"):
        check_transition(1, "Running", "Finished")
