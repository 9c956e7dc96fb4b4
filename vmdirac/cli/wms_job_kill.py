"""dirac-wms-job-kill: kill jobs (a running job ends at its pilot's next heartbeat); one result
line per job."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import job_action


@command
def main(argv: list[str] | None = None) -> int:
    return job_action(argv, "dirac-wms-job-kill", "Kill DIRAC jobs: waiting ones at once, running ones at the next heartbeat.", "killJob", "Killed")
