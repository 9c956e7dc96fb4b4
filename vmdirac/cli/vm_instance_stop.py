"""dirac-vm-instance-stop: ask VM instances to stop (drain, then halt), one result line each."""

from __future__ import annotations

import sys

from vmdirac.cli.common import command, parser
from vmdirac.cli.vm_common import MANAGER, parse_instance_ids
from vmdirac.core.clientconfig import ClientSession

MEANING = {"Stopping": "takes no new job, halts when its jobs end", "Halted": "halted"}


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-vm-instance-stop",
               "Stop VM instances (Operator): each VM takes no new job and halts when its running jobs "
               "end; with --force it halts at its next heartbeat, ending its jobs. An instance not booted "
               "yet (New) is simply Halted.",
               "$ dirac-vm-instance-stop 12 13,14\n"
               "  Instance 12: Stopping (takes no new job, halts when its jobs end)\n"
               "  Instance 13: Halted (halted)\n"
               "  ERROR: instance 14 does not exist or is not of your VO")
    p.add_argument("instances", nargs="+", metavar="ID", help="instance ids: 12, or lists 12,14")
    p.add_argument("--force", action="store_true", help="halt at the next heartbeat, even with jobs running")
    args = p.parse_args(argv)
    ids = parse_instance_ids(args.instances)
    result = ClientSession.open().client(MANAGER).stopInstance(ids, args.force)
    statuses, failed = result.get("Statuses", {}), result.get("Failed", {})
    code = 0
    for instance_id in ids:
        status = statuses.get(str(instance_id))
        if str(instance_id) in failed or status is None:
            reason = failed.get(str(instance_id), "no answer from the server about this instance")
            print(f"ERROR: {reason}", file=sys.stderr)
            code = 1
            continue
        meaning = "halts at its next heartbeat" if args.force and status == "Stopping" else MEANING.get(status, "")
        print(f"Instance {instance_id}: {status}" + (f" ({meaning})" if meaning else ""))
    return code
