"""WorkloadManagement/JobManager: submit (single, parametric, bulk), kill, delete, reschedule."""

from __future__ import annotations

import re

from vmdirac.core.export import Caller, export
from vmdirac.services.wms_base import WMSService, id_list

NORMAL_USER = "NormalUser"
_PARAMETRIC = re.compile(r"^\s*\[?\s*Parameters\s*=", re.M | re.I)
ADMINS = ("JobAdministrator", "Operator")


def _merge(result: dict, refused: dict[int, str]) -> dict:
    result["Failed"].update({str(k): v for k, v in refused.items()})
    return result


class JobManagerService(WMSService):
    name = "JobManager"

    @export(properties=[NORMAL_USER])
    def submitJob(self, caller: Caller, jdl: str) -> int | list[int]:
        """Submit one JDL: the job id, or the list of ids of a parametric job (as DIRAC)."""
        ids = self.store.submit(caller, [jdl], self.limits())
        return ids if len(ids) > 1 or _PARAMETRIC.search(jdl) else ids[0]

    @export(properties=[NORMAL_USER])
    def submitJobs(self, caller: Caller, jdls: list[str]) -> list[int]:
        """Submit several JDLs at once: all of them, or none if one is bad."""
        return self.store.submit(caller, jdls, self.limits())

    @export(properties=[NORMAL_USER, *ADMINS])
    def killJob(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        ok, refused = self.accessible(caller, id_list(jobIDs))
        return _merge(self.store.kill(caller, ok, source=f"JobManager ({caller.username or caller.dn})"), refused)

    @export(properties=[NORMAL_USER, *ADMINS])
    def deleteJob(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        ok, refused = self.accessible(caller, id_list(jobIDs))
        return _merge(self.store.delete(caller, ok), refused)

    @export(properties=[NORMAL_USER, *ADMINS])
    def rescheduleJob(self, caller: Caller, jobIDs: int | list[int]) -> dict:
        ok, refused = self.accessible(caller, id_list(jobIDs))
        return _merge(self.store.reschedule(caller, ok, self.limits()), refused)
