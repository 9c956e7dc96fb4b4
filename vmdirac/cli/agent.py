"""dirac-agent: run one agent (System/Agent) until SIGTERM, which lets its cycle finish."""

from __future__ import annotations

import signal

from vmdirac.cli.common import command, parser
from vmdirac.cli.server import add_common, prepare
from vmdirac.core.exceptions import ConfigurationError
from vmdirac.core.launcher import make_agents


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-agent", "Run one agent of the configuration, cycle after cycle.",
               "dirac-agent WorkloadManagement/StalledJobAgent --config etc/vmdirac.yaml --once")
    p.add_argument("agent", help="System/Agent")
    add_common(p)
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    args = p.parse_args(argv)
    if args.agent.count("/") != 1:
        raise ConfigurationError(f"{args.agent!r}: give the agent as System/Agent")
    context, _tree = prepare(args, args.agent, "Agents")
    (agent,) = make_agents(context, [args.agent])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    agent.run(max_cycles=1 if args.once else None)
    context.engine.dispose()
    return 1 if agent.failed_cycles and agent.failed_cycles == agent.cycles else 0
