"""WorkloadManagement/JobMonitoring: status, attributes, parameters, logging info, job lists.

Every answer is limited to what the caller may see: their own jobs, or their VO's for an
Operator or JobAdministrator. Method names and shapes follow DIRAC's, so its commands and the
portal's calls work unchanged (dict keys are job ids as strings on the wire, as in DIRAC).
"""

from __future__ import annotations

from typing import Any

from vmdirac.core.exceptions import InvalidArgument
from vmdirac.core.export import Caller, export
from vmdirac.db.job_db import ATTRIBUTES, FILTERABLE, JobFilter
from vmdirac.logic.job_access import visible_filter
from vmdirac.logic.selection import narrow, parse_selection
from vmdirac.services.wms_base import WMSService, id_list

READERS = ("NormalUser", "JobAdministrator", "Operator", "GenericPilot")
MAX_PAGE = 1000
WEB_COLUMNS = ["JobID", "JobName", "JobGroup", "Owner", "OwnerGroup", "Site", "Status", "MinorStatus",
               "ApplicationStatus", "SubmissionTime", "LastUpdateTime", "StartExecTime", "EndExecTime",
               "RescheduleCounter", "CPUTime", "NumberOfProcessors"]


def make_filter(caller: Caller, select: dict[str, Any]) -> JobFilter:
    """DIRAC's selection dict (attribute -> value or list; FromDate/ToDate/DateType) made safe."""
    values, since, until, passed = parse_selection(select, FILTERABLE, "JobID", "jobs", ("DateType", "TimeAttribute"))
    time_column = "LastUpdateTime"
    for value in passed.values():
        time_column = {"SubmissionTime": "SubmissionTime", "LastUpdate": "LastUpdateTime"}.get(value, value)
    return JobFilter(narrow(values, visible_filter(caller)), since, until, time_column)


class JobMonitoringService(WMSService):
    name = "JobMonitoring"

    def _visible(self, caller: Caller, ids: list[int], names: list[str] | None = None) -> dict[int, dict]:
        wanted = list(dict.fromkeys((names or list(ATTRIBUTES)) + ["Owner", "VO"]))
        jobs = self.store.jobdb.attributes(ids, wanted)
        from vmdirac.logic.job_access import may_access

        return {j: a for j, a in jobs.items() if may_access(caller, a)}

    def _column(self, caller: Caller, ids: int | list[int], names: list[str]) -> dict:
        jobs = self._visible(caller, id_list(ids), names)
        return {str(j): {n: a[n] for n in names} for j, a in jobs.items()}

    @export(properties=READERS)
    def getJobsStates(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        return self._column(caller, jobIDs, ["Status", "MinorStatus", "ApplicationStatus"])

    @export(properties=READERS)
    def getJobsStatus(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        return self._column(caller, jobIDs, ["Status"])

    @export(properties=READERS)
    def getJobsMinorStatus(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        return self._column(caller, jobIDs, ["MinorStatus"])

    @export(properties=READERS)
    def getJobsApplicationStatus(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        return self._column(caller, jobIDs, ["ApplicationStatus"])

    @export(properties=READERS)
    def getJobsSites(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        return self._column(caller, jobIDs, ["Site"])

    @export(properties=READERS)
    def getJobAttributes(self, caller: Caller, jobID: int, attrList: list[str] | None = None) -> dict:
        for name in attrList or []:
            if name not in ATTRIBUTES:
                raise InvalidArgument(f"no job attribute {name}")
        job = self.job(caller, jobID)
        return {k: v for k, v in job.items() if not attrList or k in attrList}

    @export(properties=READERS)
    def getJobAttribute(self, caller: Caller, jobID: int, attribute: str) -> Any:
        if attribute not in ATTRIBUTES:
            raise InvalidArgument(f"no job attribute {attribute}")
        return self.job(caller, jobID)[attribute]

    @export(properties=READERS)
    def getJobParameters(self, caller: Caller, jobIDs: int | list[int], paramList: list[str] | None = None) -> dict:
        visible = list(self._visible(caller, id_list(jobIDs), ["JobID"]))
        params = self.store.jobdb.parameters(visible, paramList)
        return {str(j): p for j, p in params.items()}

    @export(properties=READERS)
    def getJobParameter(self, caller: Caller, jobID: int, parameter: str) -> dict:
        self.job(caller, jobID)
        return self.store.jobdb.parameters([jobID], [parameter])[jobID]

    @export(properties=READERS)
    def getJobJDL(self, caller: Caller, jobID: int, original: bool = False) -> str:
        self.job(caller, jobID)
        return self.store.jobdb.jdl(jobID, original)

    @export(properties=READERS)
    def getJobLoggingInfo(self, caller: Caller, jobID: int) -> list:
        """DIRAC's tuples: (Status, MinorStatus, ApplicationStatus, DateTime, Source), in order."""
        self.job(caller, jobID)
        return [[r["Status"], r["MinorStatus"], r["ApplicationStatus"], r["DateTime"], r["Source"]]
                for r in self.store.logdb.history(jobID)]

    @export(properties=READERS)
    def getJobs(self, caller: Caller, attrDict: dict | None = None, cutDate: str | None = None) -> list[int]:
        select = dict(attrDict or {})
        if cutDate:
            select["FromDate"] = cutDate
        return self.store.jobdb.ids(make_filter(caller, select))

    @export(properties=READERS)
    def getJobPageSummaryWeb(self, caller: Caller, selectDict: dict, sortList: list[list[str]] | None = None,
                             startItem: int = 0, maxItems: int = 25) -> dict:
        """One page of jobs for the portal: ParameterNames, Records, TotalRecords, Extras (counts)."""
        if not 0 <= startItem or not 1 <= maxItems <= MAX_PAGE:
            raise InvalidArgument(f"startItem must be >= 0 and maxItems between 1 and {MAX_PAGE}")
        sort = []
        for item in sortList or [["JobID", "DESC"]]:
            if len(item) != 2 or item[1].upper() not in ("ASC", "DESC"):
                raise InvalidArgument("sortList items are [attribute, 'ASC' or 'DESC']")
            sort.append((item[0], item[1]))
        flt = make_filter(caller, selectDict)
        # One GROUP BY Status (an index-only read) gives both the Extras and the total.
        extras = self.store.jobdb.counts("Status", flt)
        _, rows = self.store.jobdb.select(flt, sort, startItem, maxItems, WEB_COLUMNS, count=False)
        return {"ParameterNames": WEB_COLUMNS, "Records": [[r[c] for c in WEB_COLUMNS] for r in rows],
                "TotalRecords": sum(extras.values()), "Extras": extras}

    @export(properties=READERS)
    def getJobStats(self, caller: Caller, attribute: str, selectDict: dict | None = None) -> dict:
        """Number of jobs per value of ``attribute`` (e.g. Status, Site) in the selection."""
        return self.store.jobdb.counts(attribute, make_filter(caller, selectDict or {}))

    @export(properties=READERS)
    def getJobSummary(self, caller: Caller, selectDict: dict | None = None) -> dict:
        return {"Status": self.getJobStats(caller, "Status", selectDict),
                "Site": self.getJobStats(caller, "Site", selectDict)}

    def _selector(self, caller: Caller, attribute: str) -> list[str]:
        return self.store.jobdb.distinct(attribute, make_filter(caller, {}))

    @export(properties=READERS)
    def getSites(self, caller: Caller) -> list[str]:
        return self._selector(caller, "Site")

    @export(properties=READERS)
    def getStates(self, caller: Caller) -> list[str]:
        return self._selector(caller, "Status")

    @export(properties=READERS)
    def getMinorStates(self, caller: Caller) -> list[str]:
        return self._selector(caller, "MinorStatus")

    @export(properties=READERS)
    def getApplicationStates(self, caller: Caller) -> list[str]:
        return self._selector(caller, "ApplicationStatus")

    @export(properties=READERS)
    def getOwners(self, caller: Caller) -> list[str]:
        return self._selector(caller, "Owner")

    @export(properties=READERS)
    def getOwnerGroup(self, caller: Caller) -> list[str]:
        return self._selector(caller, "OwnerGroup")

    @export(properties=READERS)
    def getJobGroups(self, caller: Caller) -> list[str]:
        return self._selector(caller, "JobGroup")

    @export(properties=READERS)
    def getJobTypes(self, caller: Caller) -> list[str]:
        return self._selector(caller, "JobType")
