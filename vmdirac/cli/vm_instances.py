"""dirac-vm-instances: the VM instances, as the portal's "Browse instances" shows them."""

from __future__ import annotations

from vmdirac.cli.common import command, parser
from vmdirac.cli.vm_common import MANAGER, PAGE, duration, split_values
from vmdirac.cli.wms_common import print_table
from vmdirac.core.clientconfig import ClientSession
from vmdirac.vm.instance_status import parse_instance_status

HEADERS = ("ID", "Name", "Pod", "Endpoint", "Status", "Cmd", "VM ID", "IP", "Load", "Jobs", "Uptime",
           "Last Update (UTC)", "Error")


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-vm-instances",
               "List the VM instances you may see (your VO's; all for a host operator), oldest first. "
               "Cmd is the command waiting for the VM (stop: drain then halt; halt: now).",
               "$ dirac-vm-instances --status Running --pod el9\n"
               "  ID  Name   Pod  Endpoint          Status   Cmd  VM ID   IP        Load  Jobs  Uptime    ...\n"
               "  12  el9-12 el9  CERN/openstack1   Running       a3f1..  10.0.0.7  0.98  1     01:02:03  ...")
    p.add_argument("--status", action="append", default=[], metavar="S",
                   help="only instances in this status (repeat, or S1,S2): New, Submitted, Running, Halted, ...")
    p.add_argument("--pod", action="append", default=[], metavar="P", help="only instances of this pod (repeat)")
    p.add_argument("--endpoint", action="append", default=[], metavar="SITE/ENDPOINT",
                   help="only instances on this endpoint (repeat)")
    args = p.parse_args(argv)
    select: dict[str, list[str]] = {}
    for key, values in (("Status", [parse_instance_status(s).value for s in split_values(args.status)]),
                        ("Pod", split_values(args.pod)), ("Endpoint", split_values(args.endpoint))):
        if values:
            select[key] = values
    manager = ClientSession.open().client(MANAGER)
    rows: list[dict] = []
    while True:
        page = manager.getInstances(select, [["InstanceID", "ASC"]], len(rows), PAGE)
        rows += [dict(zip(page["ParameterNames"], record)) for record in page["Records"]]
        if not page["Records"] or len(rows) >= page["TotalRecords"]:
            break
    if not rows:
        print("No instance found.")
        return 0
    print_table(HEADERS, [
        (r["InstanceID"], r["Name"], r["Pod"], r["Endpoint"], r["Status"], r["PendingCommand"], r["EndpointVMID"],
         r["PublicIP"] or r["PrivateIP"], f"{r['Load']:.2f}", r["Jobs"], duration(r["Uptime"]), r["LastUpdate"],
         r["ErrorMessage"]) for r in rows])
    return 0
