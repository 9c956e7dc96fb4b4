"""The Job Monitor: selectors, the paged job table, Logging info, Parameters, and job actions.

Every answer comes from JobMonitoring/JobManager called as the user, so the page shows and acts on
exactly what the user's own commands would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vmdirac.core.exceptions import InvalidArgument
from vmdirac.web.backend import JOB_MANAGER, JOB_MONITORING
from vmdirac.web.base import MAX_ID, MAX_IDS, PageHandler, PortalHandler, id_list

# DIRAC's Job Monitor columns, in its order.
COLUMNS = ["JobID", "Status", "MinorStatus", "ApplicationStatus", "Site", "JobName", "LastUpdateTime",
           "Owner", "OwnerGroup", "JobGroup", "SubmissionTime"]
SORTABLE = set(COLUMNS)
# query parameter -> selection key of JobMonitoring
SELECTORS = {"site": "Site", "status": "Status", "minor": "MinorStatus", "app": "ApplicationStatus",
             "owner": "Owner", "jobgroup": "JobGroup"}
SELECTOR_METHODS = {"site": "getSites", "status": "getStates", "minor": "getMinorStates",
                    "app": "getApplicationStates", "owner": "getOwners", "jobgroup": "getJobGroups"}
ACTIONS = {"kill": "killJob", "reschedule": "rescheduleJob", "delete": "deleteJob"}
PAGE_SIZES = (25, 50, 100, 500)
MAX_PAGE = max(PAGE_SIZES)
MAX_VALUES, MAX_VALUE_LEN = 200, 128     # per selector


def parse_ids(text: str) -> list[int]:
    """``12``, ``10-20``, ``12,14 15``: the ids in order, without repeats."""
    out: list[int] = []
    for item in text.replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        first, dash, last = item.partition("-")
        if dash and _is_id(first) and _is_id(last) and int(first) <= int(last):
            if int(last) - int(first) >= MAX_IDS:
                raise InvalidArgument(f"{item} stands for more than {MAX_IDS} jobs")
            out.extend(range(int(first), int(last) + 1))
        elif _is_id(item):
            out.append(int(item))
        else:
            raise InvalidArgument(f"{item[:40]!r} is not a job id")
        if len(out) > MAX_IDS:
            raise InvalidArgument(f"at most {MAX_IDS} job ids at once")
    return list(dict.fromkeys(out))


def _is_id(text: str) -> bool:
    # ASCII digits only ("²".isdigit() is true, and int() refuses it)
    return text.isascii() and text.isdigit() and 0 < int(text) <= MAX_ID


class JobMonitorPage(PageHandler):
    template = "jobs.html"
    title = "Job Monitor"

    def page_args(self) -> dict:
        return {"page_sizes": PAGE_SIZES}


class JobsHandler(PortalHandler):
    """``GET /api/jobs``: one page of the table, the count per status, and the server time."""

    async def get(self) -> None:
        started = time.perf_counter()
        select: dict[str, Any] = {}
        for arg, key in SELECTORS.items():
            values = [v for v in self.get_query_arguments(arg) if v]
            if len(values) > MAX_VALUES or any(len(v) > MAX_VALUE_LEN for v in values):
                raise InvalidArgument(f"{arg}: at most {MAX_VALUES} values of up to {MAX_VALUE_LEN} characters")
            if values:
                select[key] = values
        ids = self.get_query_argument("ids", "").strip()
        if ids:
            select["JobID"] = parse_ids(ids)
        for arg, key in (("from", "FromDate"), ("to", "ToDate")):
            value = self.get_query_argument(arg, "").strip()
            if value:
                select[key] = value
        sort = self.get_query_argument("sort", "JobID")
        direction = self.get_query_argument("dir", "DESC").upper()
        if sort not in SORTABLE or direction not in ("ASC", "DESC"):
            raise InvalidArgument(f"sort by one of {', '.join(COLUMNS)}, ASC or DESC")
        start, limit = self.int_arg("start", 0), self.int_arg("limit", PAGE_SIZES[0], 1, MAX_PAGE)
        order = [[sort, direction]] + ([["JobID", "DESC"]] if sort != "JobID" else [])  # stable pages
        page = await self.rpc(JOB_MONITORING, "getJobPageSummaryWeb", select, order, start, limit)
        names = page["ParameterNames"]
        index = [names.index(c) for c in COLUMNS]
        records = [[r[i] for i in index] for r in page["Records"]]
        ms = (time.perf_counter() - started) * 1000
        self.set_header("Server-Timing", f"app;dur={ms:.1f}")
        self.reply({"columns": COLUMNS, "records": records, "total": page["TotalRecords"],
                    "counts": page["Extras"], "start": start, "limit": limit, "server_ms": round(ms, 1)})


class SelectorsHandler(PortalHandler):
    """``GET /api/jobs/selectors``: the values each selector offers (of the user's jobs)."""

    async def get(self) -> None:
        names = list(SELECTOR_METHODS)
        values = await asyncio.gather(*(self.rpc(JOB_MONITORING, SELECTOR_METHODS[n]) for n in names))
        self.reply(dict(zip(names, values)))


class LoggingInfoHandler(PortalHandler):
    async def get(self, job_id: str) -> None:
        rows = await self.rpc(JOB_MONITORING, "getJobLoggingInfo", int(job_id))
        self.reply({"columns": ["Status", "MinorStatus", "ApplicationStatus", "DateTime (UTC)", "Source"],
                    "records": rows})


class ParametersHandler(PortalHandler):
    async def get(self, job_id: str) -> None:
        job = int(job_id)     # "007" is job 7, and the answer's key is "7"
        attributes = await self.rpc(JOB_MONITORING, "getJobAttributes", job, None)
        params = await self.rpc(JOB_MONITORING, "getJobParameters", [job], None)
        self.reply({"attributes": attributes, "parameters": params.get(str(job), {})})


class JobActionHandler(PortalHandler):
    """``POST /api/jobs/action {"action": "kill"|"reschedule"|"delete", "ids": [...]}``: DIRAC's
    bulk answer turned into one line per job."""

    async def post(self) -> None:
        body = self.json_body()
        action = body.get("action")
        if action not in ACTIONS:
            raise InvalidArgument(f"action must be one of {', '.join(ACTIONS)}")
        ids = id_list(body.get("ids"))
        result = await self.rpc(JOB_MANAGER, ACTIONS[action], ids)
        ok = {int(j) for j in result.get("Successful", [])}
        failed = {int(k): v for k, v in result.get("Failed", {}).items()}
        self.reply({"action": action, "results": [
            {"id": j, "ok": j in ok and j not in failed, "message": failed.get(j, "done" if j in ok else "no answer")}
            for j in ids]})
