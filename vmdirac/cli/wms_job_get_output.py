"""dirac-wms-job-get-output: download the output sandboxes of jobs into ``DIR/<JobID>/``."""

from __future__ import annotations

from pathlib import Path

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import PER_JOB_ERRORS, job_error, job_ids, job_parser, not_visible, transfer_bar
from vmdirac.core.clientconfig import ClientSession
from vmdirac.wms.job_status import FINAL
from vmdirac.wms.sandbox_client import download_sandbox, sandbox_url


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-get-output", "Retrieve the output sandbox of finished DIRAC jobs.",
                   "$ dirac-wms-job-get-output 12 -D results\n"
                   "  Job output sandbox retrieved in results/12/\n    std.out\n    std.err")
    p.add_argument("-D", "--Dir", type=Path, default=Path("."),
                   help="store the output in DIR/<JobID>/ (default: ./<JobID>/)")
    args = p.parse_args(argv)
    ids = job_ids(args)
    session = ClientSession.open()
    states = session.client("WorkloadManagement/JobMonitoring").getJobsStates(ids)
    store = session.client("WorkloadManagement/SandboxStore")
    url = sandbox_url(session.config, "download")
    code = 0
    for job_id in ids:
        state = states.get(str(job_id))
        if state is None:
            code = not_visible(job_id)
            continue
        try:
            sandboxes = store.getSandboxesForJob(job_id).get("Output", [])
            if not sandboxes:
                status = state["Status"]
                why = (f"is {status}: no output sandbox yet (it is uploaded when the job ends)"
                       if status not in FINAL else f"is {status} and has no output sandbox")
                code = job_error(job_id, f"job {job_id} {why}")
                continue
            dest = args.Dir / str(job_id)
            files: list[Path] = []
            for sb_id in sandboxes:
                files += download_sandbox(session.credentials, url, sb_id, dest, transfer_bar())
        except PER_JOB_ERRORS as e:
            code = job_error(job_id, e.message)
            continue
        print(f"Job output sandbox retrieved in {dest}/")
        for path in sorted(files):
            print(f"  {path.relative_to(dest)}")
    return code
