"""dirac-wms-job-delete: delete finished jobs (a running one must be killed first); one result
line per job."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_action


@command
def main(argv: list[str] | None = None) -> int:
    return job_action(argv, "dirac-wms-job-delete", "Delete DIRAC jobs (kill them first if they are running).", "deleteJob", "Deleted")
