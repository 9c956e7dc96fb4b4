"""Accounting: a report of the Accounting/DataStore as a PNG plot and its numbers, by grouping
and time span (last day, week, month)."""

from __future__ import annotations

import datetime as dt

from vmdirac.core.exceptions import InvalidArgument
from vmdirac.web.backend import ACCOUNTING
from vmdirac.web.base import PageHandler, PortalHandler

SPANS = {"day": dt.timedelta(days=1), "week": dt.timedelta(days=7), "month": dt.timedelta(days=30)}


class AccountingPage(PageHandler):
    template = "accounting.html"
    title = "Accounting"

    def page_args(self) -> dict:
        return {"spans": list(SPANS)}


class ReportsHandler(PortalHandler):
    async def get(self) -> None:
        self.reply(await self.rpc(ACCOUNTING, "listReports"))


class _ReportArgs(PortalHandler):
    def report_args(self) -> tuple:
        name = self.get_query_argument("name")
        grouping = self.get_query_argument("grouping")
        span = self.get_query_argument("span", "week")
        if span not in SPANS:
            raise InvalidArgument(f"span is one of {', '.join(SPANS)}")
        end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        return name, grouping, end - SPANS[span], end


class ReportHandler(_ReportArgs):
    """``GET /api/accounting/report?name=&grouping=&span=``: the numbers."""

    async def get(self) -> None:
        name, grouping, start, end = self.report_args()
        self.reply(await self.rpc(ACCOUNTING, "getReport", name, grouping, start, end, "auto", None))


class PlotHandler(_ReportArgs):
    """``GET /api/accounting/plot.png?name=&grouping=&span=``: the plot."""

    async def get(self) -> None:
        name, grouping, start, end = self.report_args()
        png = await self.rpc(ACCOUNTING, "getPlot", name, grouping, start, end, "auto", None)
        self.set_header("Content-Type", "image/png")
        self.finish(bytes(png))
