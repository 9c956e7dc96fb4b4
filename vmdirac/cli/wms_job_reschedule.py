"""dirac-wms-job-reschedule: send jobs back to their task queue to run again (DIRAC allows a
few times per job, Operations/Defaults/JobScheduling/MaxRescheduling); one result line per job."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_ids, job_parser, report_bulk
from vmdirac.core.clientconfig import ClientSession


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-reschedule",
                   "Reschedule DIRAC jobs: send them back to their task queue to run again.",
                   "$ dirac-wms-job-reschedule 12 13\n  Rescheduled job 12\n"
                   "  ERROR: job 13 does not exist or is not yours")
    ids = job_ids(p.parse_args(argv))
    manager = ClientSession.open().client("WorkloadManagement/JobManager")
    return report_bulk(manager.rescheduleJob(ids), ids, "Rescheduled")
