"""dirac-wms-job-logging-info: the history of a job's states, as the portal's Logging info."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import PER_JOB_ERRORS, job_error, job_ids, job_parser, print_table
from vmdirac.core.clientconfig import ClientSession

HEADERS = ("Status", "MinorStatus", "ApplicationStatus", "DateTime (UTC)", "Source")


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-logging-info", "Retrieve the history of state changes of DIRAC jobs.",
                   "$ dirac-wms-job-logging-info 12\n"
                   "  Status    MinorStatus   ApplicationStatus  DateTime (UTC)       Source\n"
                   "  Received  Job accepted  Unknown            2024-05-02 10:12:40  JobManager")
    ids = job_ids(p.parse_args(argv))
    monitoring = ClientSession.open().client("WorkloadManagement/JobMonitoring")
    code = 0
    for n, job_id in enumerate(ids):
        try:
            records = monitoring.getJobLoggingInfo(job_id)
        except PER_JOB_ERRORS as e:
            code = job_error(job_id, e.message)
            continue
        if len(ids) > 1:
            print(f"{'' if n == 0 else chr(10)}JobID={job_id}")
        print_table(HEADERS, records)
    return code
