"""dirac-vm-endpoint-status: can each cloud endpoint be used? Authentication, image and flavor."""

from __future__ import annotations

from vmdirac.cli.common import command, parser
from vmdirac.cli.vm_common import MANAGER
from vmdirac.cli.wms_common import print_table
from vmdirac.core.clientconfig import ClientSession

HEADERS = ("Endpoint", "Type", "Auth", "Image", "Image ID", "Found", "Flavor", "Found", "Reason")


def _mark(value: bool | None) -> str:
    return "-" if value is None else "ok" if value else "NO"


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-vm-endpoint-status",
               "Check each cloud endpoint of the configuration (Operator): does its driver authenticate, and does "
               "the endpoint know each configured image and flavor? Nothing is booted. Exit 1 if any check failed.",
               "$ dirac-vm-endpoint-status CERN/openstack1\n"
               "  Endpoint          Type       Auth  Image  Image ID   Found  Flavor    Found  Reason\n"
               "  CERN/openstack1   openstack  ok    el9    el9-cloud  ok     m1.small  ok")
    p.add_argument("endpoint", nargs="?", default="", metavar="SITE/ENDPOINT", help="only this endpoint")
    args = p.parse_args(argv)
    rows = ClientSession.open().client(MANAGER).checkEndpoints(args.endpoint)
    if not rows:
        print("No cloud endpoint is configured (Resources/Sites/<Site>/Cloud/<Endpoint>).")
        return 0
    print_table(HEADERS, [(r["Endpoint"], r["Type"], _mark(r["Auth"]), r["Image"] or "-", r["ImageID"] or "-",
                           _mark(r["ImageOK"]), r["Flavor"] or "-", _mark(r["FlavorOK"]), r["Reason"])
                          for r in rows])
    failed = any(not r["Auth"] or r["ImageOK"] is False or r["FlavorOK"] is False for r in rows)
    return 1 if failed else 0
