"""dirac-wms-job-delete: delete finished jobs (a running one must be killed first); one result
line per job."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_ids, job_parser, report_bulk
from vmdirac.core.clientconfig import ClientSession


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-delete",
                   "Delete DIRAC jobs (kill them first if they are running).",
                   "$ dirac-wms-job-delete 12 13\n  Deleted job 12\n"
                   "  ERROR: job 13 does not exist or is not yours")
    ids = job_ids(p.parse_args(argv))
    manager = ClientSession.open().client("WorkloadManagement/JobManager")
    return report_bulk(manager.deleteJob(ids), ids, "Deleted")
