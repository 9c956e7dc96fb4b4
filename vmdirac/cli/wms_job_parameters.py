"""dirac-wms-job-parameters: what a job reported about itself (its parameters) and its key
attributes, as ``name: value`` lines."""

from __future__ import annotations

from vmdirac.cli.common import command
from vmdirac.cli.wms_common import PER_JOB_ERRORS, job_error, job_ids, job_parser, show
from vmdirac.core.clientconfig import ClientSession

KEY_ATTRIBUTES = ["JobName", "Owner", "OwnerGroup", "Site", "Status", "MinorStatus", "ApplicationStatus",
                  "SubmissionTime", "StartExecTime", "EndExecTime", "RescheduleCounter"]


@command
def main(argv: list[str] | None = None) -> int:
    p = job_parser("dirac-wms-job-parameters", "Retrieve the parameters and key attributes of DIRAC jobs.",
                   "$ dirac-wms-job-parameters 12\n"
                   "  JobID: 12\n  Owner: alice\n  Status: Running\n  ...\n  Endpoint: local")
    ids = job_ids(p.parse_args(argv))
    monitoring = ClientSession.open().client("WorkloadManagement/JobMonitoring")
    code = 0
    attributes: dict[int, dict] = {}
    for job_id in ids:
        try:
            attributes[job_id] = monitoring.getJobAttributes(job_id, KEY_ATTRIBUTES)
        except PER_JOB_ERRORS as e:
            code = job_error(job_id, e.message)
    parameters = monitoring.getJobParameters(list(attributes)) if attributes else {}
    for n, (job_id, attrs) in enumerate(attributes.items()):
        if n:
            print()
        print(f"JobID: {job_id}")
        for name in KEY_ATTRIBUTES:
            if attrs.get(name) is not None:
                print(f"{name}: {show(attrs[name])}")
        for name, value in sorted(parameters.get(str(job_id), {}).items()):
            print(f"{name}: {show(value)}")
    return code
