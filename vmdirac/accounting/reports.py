"""What the accounting reports are and how their figures fall into time buckets: pure functions.

A report is a measure of job or VM records, bucketed in time (an hour or a day, aligned on UTC)
and split by one grouping attribute. The DB sums the records per bucket and group (SQL GROUP BY);
here the sums become the report: every bucket of the window present (zeros where nothing ended),
one series per group value. ``running_vms`` is the one report that is not a sum of records ended
in a bucket: it is the mean number of VMs up during the bucket, each VM counting for the fraction
of the bucket it was up (``spread_intervals``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vmdirac.core.exceptions import InvalidArgument

HOUR = 3600
DAY = 86400
BUCKETS = {"hour": HOUR, "day": DAY}
AUTO_HOURLY_SPAN = 2 * DAY          # "auto": hourly buckets for spans up to two days
MAX_SPAN = dt.timedelta(days=366)   # a year (a leap one included)
JOB_GROUPINGS = ("Site", "Endpoint", "VO", "User", "Status")
VM_GROUPINGS = ("Endpoint", "Site", "VO", "Pod", "Image")
# What a condDict may filter on, per record type (a superset of the groupings).
JOB_CONDITIONS = (*JOB_GROUPINGS, "Group")
VM_CONDITIONS = VM_GROUPINGS


@dataclass(frozen=True)
class ReportSpec:
    name: str
    title: str
    type: str                       # "Job" | "VM"
    unit: str
    groupings: tuple[str, ...]

    def to_wire(self) -> dict:
        return {"name": self.name, "title": self.title, "type": self.type, "unit": self.unit,
                "groupings": list(self.groupings)}

    @property
    def conditions(self) -> tuple[str, ...]:
        return JOB_CONDITIONS if self.type == "Job" else VM_CONDITIONS


REPORTS: dict[str, ReportSpec] = {r.name: r for r in (
    ReportSpec("jobs", "Jobs", "Job", "jobs", JOB_GROUPINGS),
    ReportSpec("cpu", "CPU used", "Job", "CPU hours", JOB_GROUPINGS),
    ReportSpec("wall", "Wall-clock time", "Job", "wall hours", JOB_GROUPINGS),
    ReportSpec("running_vms", "Running VMs", "VM", "VMs", VM_GROUPINGS),
    ReportSpec("vm_cost", "VM cost", "VM", "cost", VM_GROUPINGS),
    ReportSpec("vm_jobs", "Jobs run by VMs", "VM", "jobs", VM_GROUPINGS),
)}


@dataclass(frozen=True)
class Request:
    """A checked report request."""

    spec: ReportSpec
    grouping: str
    start: dt.datetime
    end: dt.datetime
    bucket_seconds: int
    conditions: dict[str, tuple[str, ...]]


def _utc(value: dt.datetime, what: str) -> dt.datetime:
    if value.tzinfo is None:
        raise InvalidArgument(f"{what} must be a UTC-aware datetime")
    return value.astimezone(dt.timezone.utc)


def bucket_width(bucket: str, start: dt.datetime, end: dt.datetime) -> int:
    """Seconds per bucket for ``hour``, ``day`` or ``auto`` (hour up to two days, else day)."""
    if bucket == "auto":
        return HOUR if (end - start).total_seconds() <= AUTO_HOURLY_SPAN else DAY
    if bucket not in BUCKETS:
        raise InvalidArgument(f"unknown bucket {bucket!r}; use hour, day or auto")
    return BUCKETS[bucket]


def check_request(name: str, grouping: str, start: dt.datetime, end: dt.datetime, bucket: str = "auto",
                  conditions: Mapping[str, object] | None = None) -> Request:
    """The request, checked; ``InvalidArgument`` with one line saying what is wrong."""
    spec = REPORTS.get(name)
    if spec is None:
        raise InvalidArgument(f"unknown report {name!r}; known: {', '.join(REPORTS)}")
    if grouping not in spec.groupings:
        raise InvalidArgument(f"report {name} cannot be grouped by {grouping!r}; use {', '.join(spec.groupings)}")
    start, end = _utc(start, "startTime"), _utc(end, "endTime")
    if end <= start:
        raise InvalidArgument(f"endTime {end:%Y-%m-%d %H:%M} is not after startTime {start:%Y-%m-%d %H:%M}")
    if end - start > MAX_SPAN:
        raise InvalidArgument(f"a report spans at most a year, not {(end - start).days} days")
    width = bucket_width(bucket, start, end)
    conds: dict[str, tuple[str, ...]] = {}
    for key, value in (conditions or {}).items():
        if key not in spec.conditions:
            raise InvalidArgument(f"report {name} cannot be selected by {key!r}; use {', '.join(spec.conditions)}")
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise InvalidArgument(f"condDict[{key!r}]: give a value or a list of values")
        conds[key] = tuple(str(v) for v in values)
    return Request(spec, grouping, start, end, width, conds)


def epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


def bucket_starts(start: dt.datetime, end: dt.datetime, width: int) -> list[int]:
    """Epoch seconds of the start of every bucket that overlaps ``[start, end)``."""
    first = epoch(start) // width * width
    last = epoch(end)
    return list(range(first, last if last > first else first + 1, width))


def build_report(req: Request, rows: Iterable[tuple[int, str, float]]) -> dict:
    """The report dict from ``(bucket start, group, value)`` rows: every bucket of the window, one
    series per group (sorted by name), zeros where a group has nothing."""
    times = bucket_starts(req.start, req.end, req.bucket_seconds)
    index = {t: n for n, t in enumerate(times)}
    series: dict[str, list[float]] = {}
    for bucket, group, value in rows:
        n = index.get(bucket)
        if n is None:
            continue
        values = series.setdefault(group, [0.0] * len(times))
        values[n] += float(value)
    return {"name": req.spec.name, "title": req.spec.title, "unit": req.spec.unit, "grouping": req.grouping,
            "bucket_seconds": req.bucket_seconds, "times": times,
            "series": {g: [round(v, 6) for v in series[g]] for g in sorted(series)}}


def spread_intervals(intervals: Iterable[tuple[str, dt.datetime, dt.datetime]], start: dt.datetime,
                     end: dt.datetime, width: int) -> list[tuple[int, str, float]]:
    """``(bucket, group, mean VMs up)``: each interval adds, to every bucket it overlaps, the
    fraction of the bucket it covers (clipped to the window). Cost: buckets spanned per interval."""
    lo, hi = epoch(start), epoch(end)
    sums: dict[tuple[int, str], float] = {}
    for group, s, e in intervals:
        a, b = max(epoch(s), lo), min(epoch(e), hi)
        if b <= a:
            continue
        bucket = a // width * width
        while bucket < b:
            covered = min(b, bucket + width) - max(a, bucket)
            if covered > 0:
                sums[bucket, group] = sums.get((bucket, group), 0.0) + covered / width
            bucket += width
    return [(b, g, v) for (b, g), v in sorted(sums.items())]


def totals(report: Mapping) -> dict[str, float]:
    """Sum over the window of each series (the legend's figures, the CLI's table)."""
    return {g: round(sum(v), 6) for g, v in report["series"].items()}
