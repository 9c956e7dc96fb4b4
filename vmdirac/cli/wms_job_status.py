"""dirac-wms-job-status: one line of status per job, as DIRAC prints it."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_ids, job_parser, not_visible
from vmdirac.core.clientconfig import ClientSession


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-status", "Retrieve the status of the given DIRAC jobs.",
                   "$ dirac-wms-job-status 12 14-15\n"
                   "  JobID=12 Status=Waiting; MinorStatus=Pilot Agent Submission; Site=ANY;")
    ids = job_ids(p.parse_args(argv))
    monitoring = ClientSession.open().client("WorkloadManagement/JobMonitoring")
    states = monitoring.getJobsStates(ids)
    sites = monitoring.getJobsSites(ids)
    code = 0
    for job_id in ids:
        state = states.get(str(job_id))
        if state is None:
            code = not_visible(job_id)
            continue
        site = sites.get(str(job_id), {}).get("Site") or "ANY"
        print(f"JobID={job_id} Status={state['Status']}; MinorStatus={state['MinorStatus']}; Site={site};")
    return code
