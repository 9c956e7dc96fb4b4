"""dirac-service: start one service (System/Service) on its own port."""

from __future__ import annotations

import asyncio

from vmdirac.cli.common import command, parser
from vmdirac.cli.server import add_common, prepare
from vmdirac.core.exceptions import ConfigurationError
from vmdirac.core.launcher import make_services, run_components


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-service", "Start one service of the configuration.",
               "dirac-service Configuration/Server --config etc/vmdirac.yaml --port 9135")
    p.add_argument("service", help="System/Service, e.g. Configuration/Server")
    add_common(p)
    args = p.parse_args(argv)
    if args.service.count("/") != 1:
        raise ConfigurationError(f"{args.service!r}: give the service as System/Service")
    context, tree = prepare(args, args.service, "Services")
    services = make_services(context, [args.service])
    asyncio.run(run_components(context, services, [], args.port))
    return 0
