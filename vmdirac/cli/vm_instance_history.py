"""dirac-vm-instance-history: every status change and heartbeat of one VM instance."""

from __future__ import annotations

from vmdirac.cli.common import command, parser
from vmdirac.cli.vm_common import MANAGER, parse_instance_ids, size
from vmdirac.cli.wms_common import print_table
from vmdirac.core.clientconfig import ClientSession
from vmdirac.core.exceptions import InvalidArgument


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-vm-instance-history",
               "Show the history of a VM instance: each status change with its reason, and each heartbeat "
               "with the load, running jobs and transfers the VM reported.",
               "$ dirac-vm-instance-history 12\n"
               "  Time (UTC)           Status     Load  Jobs  Files  Transferred  Reason\n"
               "  2025-03-01 10:00:00  New        0.00  0     0      0 B          to be booted\n"
               "  2025-03-01 10:00:02  Submitted  0.00  0     0      0 B          the endpoint accepted the boot")
    p.add_argument("instance", metavar="ID", help="the instance id (dirac-vm-instances shows them)")
    ids = parse_instance_ids([p.parse_args(argv).instance])
    if len(ids) != 1:
        raise InvalidArgument("give one instance id")
    rows = ClientSession.open().client(MANAGER).getInstanceHistory(ids[0])
    print_table(("Time (UTC)", "Status", "Load", "Jobs", "Files", "Transferred", "Reason"), [
        (h["Time"], h["Status"], f"{h['Load']:.2f}", h["Jobs"], h["TransferredFiles"], size(h["TransferredBytes"]),
         h["Reason"]) for h in rows])
    return 0
