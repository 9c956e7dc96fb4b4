"""dirac-wms-job-kill: kill jobs (a running job ends at its pilot's next heartbeat); one result
line per job."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_ids, job_parser, report_bulk
from vmdirac.core.clientconfig import ClientSession


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-kill",
                   "Kill DIRAC jobs: waiting ones at once, running ones at the next heartbeat.",
                   "$ dirac-wms-job-kill 12 13\n  Killed job 12\n"
                   "  ERROR: job 13 does not exist or is not yours")
    ids = job_ids(p.parse_args(argv))
    manager = ClientSession.open().client("WorkloadManagement/JobManager")
    return report_bulk(manager.killJob(ids), ids, "Killed")
