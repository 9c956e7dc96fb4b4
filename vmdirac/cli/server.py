"""vmdirac-server: every service and agent of the configuration in one process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vmdirac.cli.common import command, parser
from vmdirac.core.launcher import (
    component_class, configured, default_root, make_agents, make_context, make_services, read_local, run_components,
)
from vmdirac.core.logs import setup_logging


def add_common(p) -> None:
    p.add_argument("--root", type=Path, default=None,
                   help="run directory: certificates, SQLite DB, logs (default $VMDIRAC_ROOT or ~/.vmdirac)")
    p.add_argument("-c", "--config", type=Path, action="append", default=[],
                   help="YAML configuration file (repeatable; later files override earlier ones; "
                        "<root>/etc/local.yaml is read last)")
    p.add_argument("--port", type=int, default=None, help="HTTPS port (default: Local/Port)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default: Local/LogLevel)")


def prepare(args, component: str, kind: str | None = None):
    """Read the files, check the component named on the command line exists, set up logging,
    then open the DB and the configuration."""
    root = (args.root or default_root()).expanduser().resolve()
    tree, local, paths = read_local(args.config, root)
    if kind:
        component_class(kind, component, tree)
    setup_logging(args.log_level or local.LogLevel, local.LogFile or None, component)
    return make_context(tree, local, paths), tree


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("vmdirac-server", "Start all services and agents of the configuration in one process.",
               "vmdirac-server --root run --config etc/vmdirac.yaml")
    add_common(p)
    p.add_argument("--no-agents", action="store_true", help="serve the services only")
    p.add_argument("--web-port", type=int, default=None,
                   help="web portal HTTPS port (default: Local/WebPort; 0: any free port)")
    p.add_argument("--no-web", action="store_true", help="do not serve the web portal")
    args = p.parse_args(argv)
    context, tree = prepare(args, "vmdirac-server")
    services = make_services(context, configured("Services", tree))
    agents = [] if args.no_agents else make_agents(context, configured("Agents", tree))
    web_port = -1 if args.no_web else (context.local.WebPort if args.web_port is None else args.web_port)
    asyncio.run(run_components(context, services, agents, args.port, web_port=web_port))
    return 0
