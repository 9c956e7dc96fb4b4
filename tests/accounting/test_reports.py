"""Report logic with plain data: checking requests, buckets, series, VMs spread over buckets."""

from __future__ import annotations

import datetime as dt

import pytest

from vmdirac.accounting.reports import (
    REPORTS, bucket_starts, bucket_width, build_report, check_request, spread_intervals, totals,
)
from vmdirac.core.exceptions import InvalidArgument

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 2, tzinfo=UTC)
H = dt.timedelta(hours=1)
E0 = int(T0.timestamp())


def test_auto_buckets_are_hours_up_to_two_days_then_days():
    assert bucket_width("auto", T0, T0 + 48 * H) == 3600
    assert bucket_width("auto", T0, T0 + 48 * H + dt.timedelta(seconds=1)) == 86400
    assert bucket_width("day", T0, T0 + H) == 86400
    with pytest.raises(InvalidArgument, match="unknown bucket 'minute'"):
        bucket_width("minute", T0, T0 + H)


def test_buckets_are_aligned_on_utc_and_cover_the_window():
    assert bucket_starts(T0 + dt.timedelta(minutes=30), T0 + 2 * H + dt.timedelta(minutes=1), 3600) == [
        E0, E0 + 3600, E0 + 7200]
    assert bucket_starts(T0 + 5 * H, T0 + 30 * H, 86400) == [E0, E0 + 86400]
    assert bucket_starts(T0, T0 + H, 3600) == [E0]


@pytest.mark.parametrize("args, message", [
    (("jobs", "Pod", T0, T0 + H), "cannot be grouped by 'Pod'"),
    (("vm_cost", "User", T0, T0 + H), "cannot be grouped by 'User'"),
    (("jobs", "Site", T0 + H, T0), "is not after startTime"),
    (("jobs", "Site", T0, T0 + dt.timedelta(days=367)), "at most a year"),
    (("jobs", "Site", T0.replace(tzinfo=None), T0 + H), "UTC-aware"),
    (("jobs", "Site", T0, T0 + H, "auto", {"Site": [1.5]}), "give a value or a list"),
    (("running_vms", "Pod", T0, T0 + H, "auto", {"Status": ["Done"]}), "cannot be selected by 'Status'"),
])
def test_bad_requests_say_what_is_wrong(args, message):
    with pytest.raises(InvalidArgument, match=message):
        check_request(*args)


def test_conditions_become_tuples_of_strings():
    req = check_request("jobs", "Site", T0, T0 + H, "hour", {"Site": "S1", "Status": ["Done", "Failed"]})
    assert req.conditions == {"Site": ("S1",), "Status": ("Done", "Failed")}
    assert req.bucket_seconds == 3600 and req.spec is REPORTS["jobs"]


def test_a_report_has_every_bucket_and_a_series_per_group():
    req = check_request("cpu", "VO", T0, T0 + 3 * H, "hour")
    report = build_report(req, [(E0 + 3600, "vo2", 2.5), (E0, "vo1", 1.0), (E0 + 7200, "vo1", 0.5),
                                (E0 + 3600 * 10, "vo1", 99.0)])   # outside the window: ignored
    assert report == {"name": "cpu", "title": "CPU used", "unit": "CPU hours", "grouping": "VO",
                      "bucket_seconds": 3600, "times": [E0, E0 + 3600, E0 + 7200],
                      "series": {"vo1": [1.0, 0.0, 0.5], "vo2": [0.0, 2.5, 0.0]}}
    assert totals(report) == {"vo1": 1.5, "vo2": 2.5}


def test_vms_count_for_the_fraction_of_each_bucket_they_were_up():
    rows = spread_intervals([
        ("E1", T0 + dt.timedelta(minutes=30), T0 + 2 * H),      # half of hour 0, all of hour 1
        ("E1", T0, T0 + 3 * H),                                 # the whole window
        ("E2", T0 - 5 * H, T0 + dt.timedelta(minutes=15)),      # clipped at the window's start
        ("E2", T0 + 5 * H, T0 + 6 * H),                         # after the window: nothing
    ], T0, T0 + 3 * H, 3600)
    assert rows == [(E0, "E1", 1.5), (E0, "E2", 0.25), (E0 + 3600, "E1", 2.0), (E0 + 7200, "E1", 1.0)]
    req = check_request("running_vms", "Endpoint", T0, T0 + 3 * H, "hour")
    assert build_report(req, rows)["series"] == {"E1": [1.5, 2.0, 1.0], "E2": [0.25, 0.0, 0.0]}


def test_a_day_long_vm_is_one_vm_in_a_daily_bucket():
    rows = spread_intervals([("E1", T0, T0 + 24 * H)], T0, T0 + 72 * H, 86400)
    assert rows == [(E0, "E1", 1.0)]
