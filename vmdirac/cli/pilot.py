"""dirac-pilot: run a pilot (JobAgent) on this machine until it drains.

What contextualization starts inside every VM; also usable by hand with a user proxy, in which
case it takes only that user's jobs. SIGTERM or SIGINT drains (no new job, running jobs end);
a second one kills the payloads.
"""

from __future__ import annotations

import signal
from pathlib import Path

from vmdirac.cli.common import command, parser
from vmdirac.core.logs import setup_logging
from vmdirac.pilot.config import Connection, PilotOptions, load_options
from vmdirac.pilot.job_agent import JobAgent

EXAMPLE = """dirac-pilot --url https://dirac.example.org:8443 --cert hostcert.pem --key hostkey.pem \\
      --ca /etc/grid-security/certificates --site LCG.Example.org --endpoint local --slots 4 \\
      --tag GPU --work-dir /scratch/pilot --stop-file /scratch/pilot/STOP --max-empty-matches 60
  dirac-pilot --client-config ~/.vmdirac/dirac.yaml --proxy /tmp/x509up_u1000 --slots 2
  dirac-pilot --options /etc/vmdirac/pilot.yaml     (the same names as PilotOptions, e.g. Slots: 4)"""

# command-line flag -> PilotOptions field
FLAGS = {
    "url": "Servers", "client_config": "ClientConfig", "proxy": "Proxy", "cert": "Cert", "key": "Key",
    "ca": "CACertificates", "site": "Site", "endpoint": "Endpoint", "image": "Image", "platform": "Platform",
    "tag": "Tags", "required_tag": "RequiredTags", "slots": "Slots", "max_ram": "MaxRAM",
    "time_limit": "TimeLimit", "instance_id": "InstanceID", "pilot_reference": "PilotReference",
    "work_dir": "WorkDir", "max_empty_matches": "MaxEmptyMatches", "match_wait": "MatchWait",
    "polling_interval": "PollingInterval",
    "heartbeat_period": "HeartbeatPeriod", "watchdog_period": "WatchdogPeriod",
    "max_wall_clock_time": "MaxWallClockTime", "kill_grace": "KillGrace", "stop_file": "StopFile",
    "keep_work_dirs": "KeepWorkDirs",
}


def _parser():
    p = parser("dirac-pilot", "Run a pilot: ask the Matcher for jobs that fit this machine and run them.", EXAMPLE)
    d = PilotOptions()
    p.add_argument("--options", metavar="FILE", help="a YAML file of pilot options (flags override it)")
    where = p.add_argument_group("server and credential")
    where.add_argument("--url", action="append", metavar="URL",
                       help="server base URL https://host:port (repeat for failover)")
    where.add_argument("--client-config", metavar="FILE", help="client settings file (dirac.yaml) instead of --url")
    where.add_argument("--proxy", metavar="FILE", help="a proxy: a user's (takes only that user's jobs) or a VM's")
    where.add_argument("--cert", metavar="FILE", help="host certificate (with --key)")
    where.add_argument("--key", metavar="FILE", help="host key")
    where.add_argument("--ca", metavar="DIR", help="trusted CA certificates directory")
    offer = p.add_argument_group("what the pilot offers")
    offer.add_argument("--site", help="DIRAC site name, e.g. LCG.CERN.ch")
    offer.add_argument("--endpoint", help="cloud endpoint the VM runs on")
    offer.add_argument("--image", help="VM image")
    offer.add_argument("--platform", help="platform (default: from /etc/os-release, e.g. x86_64-el9)")
    offer.add_argument("--tag", action="append", metavar="TAG", help="a tag this resource has (repeat or a,b)")
    offer.add_argument("--required-tag", action="append", metavar="TAG", help="a tag jobs must ask for")
    offer.add_argument("--slots", type=int, help="cores offered (default: every core this process may use)")
    offer.add_argument("--max-ram", type=int, metavar="MB", help="memory offered (default: MemTotal)")
    offer.add_argument("--time-limit", type=float, metavar="S", help="seconds this pilot may live (default: none)")
    offer.add_argument("--instance-id", help="the VM's instance id")
    offer.add_argument("--pilot-reference", help="this pilot's name (default: pilot-<random>)")
    how = p.add_argument_group("behaviour")
    how.add_argument("--work-dir", metavar="DIR", help="where job directories go (default: ./<pilot reference>)")
    how.add_argument("--max-empty-matches", type=int, metavar="N",
                     help=f"drain after N consecutive empty answers (default {d.MaxEmptyMatches}: never)")
    how.add_argument("--match-wait", type=float, metavar="S",
                     help=f"long poll: seconds the Matcher may hold a request until a job arrives (default "
                          f"{d.MatchWait:g}; 0: plain polling)")
    how.add_argument("--polling-interval", type=float, metavar="S",
                     help=f"seconds between requests when not long-polling, or after an error (default "
                          f"{d.PollingInterval})")
    how.add_argument("--heartbeat-period", type=float, metavar="S",
                     help=f"seconds between job heartbeats (default {d.HeartbeatPeriod:g})")
    how.add_argument("--watchdog-period", type=float, metavar="S",
                     help=f"seconds between CPU/wall-time checks (default {d.WatchdogPeriod:g})")
    how.add_argument("--max-wall-clock-time", type=float, metavar="S",
                     help=f"wall-clock limit of one job (default {d.MaxWallClockTime:g})")
    how.add_argument("--kill-grace", type=float, metavar="S",
                     help=f"seconds from SIGTERM to SIGKILL of a payload (default {d.KillGrace:g})")
    how.add_argument("--stop-file", metavar="FILE", help="drain when this file appears")
    how.add_argument("--keep-work-dirs", action="store_true", default=None, help="keep job directories")
    how.add_argument("--log-level", default="INFO")
    how.add_argument("--log-file", metavar="FILE")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {field: getattr(args, flag) for flag, field in FLAGS.items()}
    for flag in ("url", "tag", "required_tag"):
        if overrides[FLAGS[flag]] is not None:
            overrides[FLAGS[flag]] = ",".join(overrides[FLAGS[flag]])
    opts = load_options(args.options, overrides).resolved()
    setup_logging(args.log_level, args.log_file, component=f"pilot {opts.PilotReference}")
    connection = Connection(opts, cache_dir=Path(opts.WorkDir) / ".cache")
    agent = JobAgent(opts, connection)

    def on_signal(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if agent.draining:
            agent.abort(f"{name} while draining")
        else:
            agent.drain(f"{name} received")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return agent.run()
