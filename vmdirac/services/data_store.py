"""Accounting/DataStore: accounting reports and their plots.

Records are not sent here: the job and VM DBs write them in the transaction that ends a job or a
VM (``db.accounting_db``), so there is no exported method that writes. Readers are people
(NormalUser, Operator, JobAdministrator) and see the accounting of their own VO only; a host with
Operator or JobAdministrator (a service acting for the installation) sees every VO. Pilots and VMs
(GenericPilot) get nothing.

- ``listReports()``: ``[{"name", "title", "type": "Job"|"VM", "unit", "groupings"}]``
- ``getReport(name, grouping, startTime, endTime, bucket="auto", condDict=None)``:
  ``{"name", "title", "unit", "grouping", "bucket_seconds", "times": [epoch s of bucket starts],
  "series": {group: [value per bucket]}}``
- ``getPlot(...)``: the same report as a PNG (bytes).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import Any

from vmdirac.accounting import plots
from vmdirac.accounting.reports import REPORTS, Request, build_report, check_request, spread_intervals
from vmdirac.core.exceptions import NotAuthorized
from vmdirac.core.export import Caller, Service, export
from vmdirac.db.accounting_db import AccountingDB, Selection

log = logging.getLogger(__name__)

READERS = ("NormalUser", "Operator", "JobAdministrator")
ADMINS = ("Operator", "JobAdministrator")


def restrict(caller: Caller, req: Request) -> Request:
    """The request narrowed to what ``caller`` may see: its own VO (a host administrator: all)."""
    if caller.is_host and caller.has(*ADMINS):
        return req
    if not caller.vo:
        raise NotAuthorized(f"{caller} belongs to no VO: no accounting to show")
    asked = req.conditions.get("VO")
    if asked is not None and caller.vo not in asked:
        raise NotAuthorized(f"{caller} sees the accounting of VO {caller.vo} only")
    return replace(req, conditions={**req.conditions, "VO": (caller.vo,)})


class DataStoreService(Service):
    system = "Accounting"
    name = "DataStore"

    def initialize(self) -> None:
        self.db = AccountingDB(self.context.engine)
        self.db.create_tables()

    def report(self, req: Request) -> dict:
        sel = Selection(req.start, req.end, req.bucket_seconds, req.conditions)
        if req.spec.name == "running_vms":
            rows = spread_intervals(self.db.vm_intervals(req.grouping, sel), req.start, req.end, req.bucket_seconds)
        else:
            rows = self.db.grouped(req.spec.name, req.grouping, sel)
        report = build_report(req, rows)
        report["span"] = [req.start, req.end]
        return report

    def _request(self, caller: Caller, name: str, grouping: str, start: dt.datetime, end: dt.datetime,
                 bucket: str, cond: dict | None) -> Request:
        return restrict(caller, check_request(name, grouping, start, end, bucket, cond))

    @export(properties=READERS)
    def listReports(self, caller: Caller) -> list[dict]:
        return [spec.to_wire() for spec in REPORTS.values()]

    @export(properties=READERS)
    def getReport(self, caller: Caller, name: str, grouping: str, startTime: dt.datetime, endTime: dt.datetime,
                  bucket: str = "auto", condDict: dict[str, Any] | None = None) -> dict:
        return self.report(self._request(caller, name, grouping, startTime, endTime, bucket, condDict))

    @export(properties=READERS)
    def getPlot(self, caller: Caller, name: str, grouping: str, startTime: dt.datetime, endTime: dt.datetime,
                bucket: str = "auto", condDict: dict[str, Any] | None = None) -> bytes:
        return plots.report_png(self.report(self._request(caller, name, grouping, startTime, endTime, bucket,
                                                          condDict)))
