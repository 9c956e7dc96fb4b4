"""DIRAC's selection dicts: what is accepted, and the one-line reasons for what is not."""

from __future__ import annotations

import datetime as dt

import pytest

from vmdirac.core.exceptions import InvalidArgument
from vmdirac.logic.selection import narrow, parse_selection

FIELDS = ("JobID", "Status", "Site")


def test_ids_strings_and_dates_are_read():
    values, since, until, passed = parse_selection(
        {"JobID": ["12", 13], "Status": "Done", "FromDate": "2026-01-02", "Extra": 1}, FIELDS, "JobID", "jobs",
        passthrough=("Extra",))
    assert values == {"JobID": (12, 13), "Status": ("Done",)}
    assert since == dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc) and until is None
    assert passed == {"Extra": 1}


@pytest.mark.parametrize("select,message", [
    ({"JobID": "abc"}, "JobID values must be integers"),
    ({"JobID": "²"}, "JobID values must be integers"),          # a digit to str.isdigit, not to int()
    ({"JobID": True}, "JobID values must be integers"),
    ({"JobID": 2**63}, "JobID values must be between 0 and 2**63 - 1"),
    ({"JobID": -1}, "JobID values must be between 0 and 2**63 - 1"),
    ({"Status": 3}, "Status values must be strings"),
    ({"Owner": "x"}, "cannot select jobs by Owner"),
    ({"ToDate": "2024-13-45"}, "ToDate: '2024-13-45' is not a date"),
])
def test_bad_selections_are_one_line_errors(select, message):
    with pytest.raises(InvalidArgument) as err:
        parse_selection(select, FIELDS, "JobID", "jobs")
    assert message in err.value.message and "\n" not in err.value.message


def test_narrowing_keeps_only_what_the_caller_may_see():
    assert narrow({"Status": ("Done",)}, {"Owner": ("alice",)}) == {"Status": ("Done",), "Owner": ("alice",)}
    assert narrow({"Owner": ("alice", "bob")}, {"Owner": ("alice",)}) == {"Owner": ("alice",)}
