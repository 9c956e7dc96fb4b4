"""dirac-wms-job-reschedule: send jobs back to their task queue to run again (DIRAC allows a
few times per job, Operations/Defaults/JobScheduling/MaxRescheduling); one result line per job."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_action


@command
def main(argv: list[str] | None = None) -> int:
    return job_action(argv, "dirac-wms-job-reschedule", "Reschedule DIRAC jobs: send them back to their task queue to run again.", "rescheduleJob", "Rescheduled")
