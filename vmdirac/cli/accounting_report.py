"""dirac-accounting-report: one accounting report as a table (a row per time bucket, a column per
group, totals last), and optionally its plot as a PNG file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from vmdirac.accounting.reports import REPORTS, totals
from vmdirac.cli.common import command, parser
from vmdirac.cli.wms_common import print_table
from vmdirac.core.clientconfig import ClientSession
from vmdirac.core.exceptions import InvalidArgument

DATASTORE = "Accounting/DataStore"


def _figure(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}"


def rows(report: dict) -> list[list[str]]:
    """A row per bucket (its UTC start) with each group's value; a last row of totals."""
    fmt = "%Y-%m-%d" if report["bucket_seconds"] >= 86400 else "%Y-%m-%d %H:%M"
    groups = list(report["series"])
    out = [[dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime(fmt),
            *(_figure(report["series"][g][n]) for g in groups)] for n, t in enumerate(report["times"])]
    total = totals(report)
    out.append(["total", *(_figure(total[g]) for g in groups)])
    return out


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-accounting-report",
               f"Show an accounting report of your VO: {', '.join(REPORTS)}; grouped by an attribute "
               "(jobs: Site, Endpoint, VO, User, Status; VMs: Endpoint, Site, VO, Pod, Image), in hourly "
               "or daily buckets (UTC) over the last days.",
               "dirac-accounting-report jobs --grouping Site --days 7 --png jobs-by-site.png")
    p.add_argument("name", help="the report: " + ", ".join(REPORTS))
    p.add_argument("--grouping", "-g", default="", help="attribute to group by (default: the report's first)")
    p.add_argument("--days", type=float, default=7.0, help="time span ending now (default 7 days)")
    p.add_argument("--bucket", choices=("auto", "hour", "day"), default="auto",
                   help="bucket width (auto: hours up to two days)")
    p.add_argument("--png", type=Path, help="also write the plot to this file")
    args = p.parse_args(argv)
    spec = REPORTS.get(args.name)
    if spec is None:
        raise InvalidArgument(f"unknown report {args.name!r}; known: {', '.join(REPORTS)}")
    if not 0 < args.days <= 366:
        raise InvalidArgument("--days must be more than 0 and at most 366")
    grouping = args.grouping or spec.groupings[0]
    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    start = end - dt.timedelta(days=args.days)
    client = ClientSession.open().client(DATASTORE)
    report = client.getReport(spec.name, grouping, start, end, args.bucket)
    print(f"{report['title']} ({report['unit']}) by {grouping}, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC")
    if not report["series"]:
        print("No records in this time span.")
    else:
        print_table(["Time (UTC)", *report["series"]], rows(report))
    if args.png:
        args.png.write_bytes(client.getPlot(spec.name, grouping, start, end, args.bucket))
        print(f"Plot written to {args.png}")
    return 0
