"""The VirtualMachineMonitor: the agent inside every VM (not in the server).

It declares the VM running, starts the pilot as its child, heartbeats every ``HeartBeatPeriod``
(load, running jobs, transfers, uptime) and halts the VM when ``decide`` says so:

- stop policy ``Elastic``: after ``HaltPeriod`` with no job and load under ``MinWorkingLoad``;
  ``Never``: never by itself (and a pilot that ends is started again);
- the server's answer ``stop`` (an operator, scale-down, maximum lifetime) or a provider's
  shutdown notice (HEPiX machine features: ``$MACHINEFEATURES/shutdowntime``, a Unix time)
  drains: the pilot takes no new job, its running jobs end, then the VM halts (a notice's time,
  once reached, halts at once); ``halt`` halts now.

An idle VM also drains before it halts: the pilot may be inside a long poll that is just being
given a job, and halting only once the pilot has exited loses no job.

Calls, all with the VM's own credential (the service knows the instance from it):
``VirtualMachineManager.declareInstanceRunning(privateIP)``,
``instanceHeartBeat(load, jobs, transferredFiles, transferredBytes, uptime)`` answering
``{"command": "" | "stop" | "halt"}``, ``declareInstanceHalting()``; and, when the VM's
credential nears its end (``RenewCredentialBefore``), ``renewInstanceCredential()``, whose PEM
replaces the credential file. A failing server is logged and tried again next period; the VM
keeps working meanwhile.

Pluggable parts: the load source (``/proc/loadavg``, or on the local cloud the CPU of the VM's
own processes, since there the machine's load is shared by every local VM) and the halt action
(``shutdown -h now``, or on the local cloud the ``VMDIRAC_HALT_FILE`` its init waits for).
Transfers are reported as 0 files / 0 bytes: nothing in the VM measures them yet.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vmdirac.agents.vm_load import LoadSource, make_load_source
from vmdirac.contexts import MANAGER, ROOT_ENV, vm_path
from vmdirac.core.client import ClientCredentials, RPCClient
from vmdirac.core.config import dump_yaml, load_files, options
from vmdirac.core.exceptions import ConfigurationError, IllegalTransition, VMDiracError
from vmdirac.core.x509 import Credential, write_private
from vmdirac.pilot.config import PilotOptions
from vmdirac.pilot.job_agent import STATUS_FILE as PILOT_STATUS
from vmdirac.vm.monitor_policy import Action, Command, Decision, MonitorOptions, MonitorState, Observation, decide

log = logging.getLogger(__name__)

PILOT_MAIN = "import sys; from vmdirac.cli.pilot import main; sys.exit(main())"


# ---------------------------------------------------------------- configuration

@dataclass(frozen=True)
class VMConfig:
    instance_id: int
    instance_name: str
    pod: str
    site: str
    services: dict[str, tuple[str, ...]]
    credential: Path
    ca: Path
    monitor: MonitorOptions
    pilot: dict[str, Any]
    root: str                            # the local cloud's VM root ("" on a real VM)

    def path(self, vm_location: str) -> Path:
        return vm_path(vm_location, self.root)

    @property
    def work_dir(self) -> Path:
        return self.path(self.monitor.WorkDir)


def load_vm_config(path: str | Path, root: str | None = None) -> VMConfig:
    """The file contextualization wrote (``vmdirac.contexts.vm_config``), checked."""
    root = os.environ.get(ROOT_ENV, "") if root is None else root
    tree = load_files([path])
    where = str(path)
    instance = tree.get("Instance") or {}
    monitor = options(MonitorOptions, tree.get("Monitor"), f"{where}/Monitor")
    if monitor.StopPolicy not in ("Elastic", "Never"):
        raise ConfigurationError(f"{where}/Monitor/StopPolicy: Elastic or Never, not {monitor.StopPolicy!r}")
    services = {str(k): tuple(v if isinstance(v, list) else [v]) for k, v in (tree.get("Services") or {}).items()}
    if not services.get(MANAGER):
        raise ConfigurationError(f"{where}: no URL for {MANAGER} under Services")
    pilot = dict(tree.get("Pilot") or {})
    if monitor.StartPilot:
        options(PilotOptions, pilot, f"{where}/Pilot")      # unknown or ill-typed options fail here
    try:
        ident = int(instance["ID"])
        name = str(instance.get("Name", ident))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigurationError(f"{where}: Instance/ID is missing or not a number") from e
    return VMConfig(ident, name, str(instance.get("Pod", "")), str(instance.get("Site", "")), services,
                    vm_path(str(tree.get("Credential", "")), root), vm_path(str(tree.get("CACertificates", "")), root),
                    monitor, pilot, root)


# ---------------------------------------------------------------- halt actions

def make_halt_action(opts: MonitorOptions) -> Callable[[str], None]:
    """``halt-file``: touch ``$VMDIRAC_HALT_FILE`` (the local cloud's init ends the VM);
    ``shutdown``: run ``HaltCommand`` (a real VM powers off, and the cloud sees it stopped)."""
    kind = opts.HaltAction
    halt_file = os.environ.get("VMDIRAC_HALT_FILE", "")
    if kind == "auto":
        kind = "halt-file" if halt_file else "shutdown"
    if kind == "halt-file":
        if not halt_file:
            raise ConfigurationError("Monitor/HaltAction halt-file: VMDIRAC_HALT_FILE is not set")
        return lambda reason: Path(halt_file).write_text(reason + "\n")
    if kind == "shutdown":
        def shutdown(reason: str) -> None:
            done = subprocess.run(list(opts.HaltCommand), capture_output=True, text=True, timeout=60)
            if done.returncode:
                log.error("halt command %s failed (%d): %s", " ".join(opts.HaltCommand), done.returncode,
                          done.stderr.strip())
        return shutdown
    raise ConfigurationError(f"Monitor/HaltAction: auto, halt-file or shutdown, not {kind!r}")


# ---------------------------------------------------------------- the pilot, as a child process

class Pilot:
    """``dirac-pilot`` started by the monitor, with the VM's options; drained with its stop file
    and one SIGTERM (a second SIGTERM makes it kill its payloads)."""

    def __init__(self, config: VMConfig) -> None:
        self.config = config
        self.dir = config.work_dir / "pilot"
        self.stop_file = self.dir / "STOP"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.signalled = 0

    def options_file(self) -> Path:
        section = dict(self.config.pilot)
        section.update(Proxy=str(self.config.credential), CACertificates=str(self.config.ca),
                       WorkDir=str(self.dir), StopFile=str(self.stop_file))
        section.setdefault("InstanceID", str(self.config.instance_id))
        section.setdefault("PilotReference", f"{self.config.instance_name}-pilot{self.starts}")
        path = self.config.work_dir / "pilot.yaml"
        write_private(path, dump_yaml(section).encode())
        return path

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop_file.unlink(missing_ok=True)
        (self.dir / PILOT_STATUS).unlink(missing_ok=True)
        self.starts += 1
        self.signalled = 0
        argv = [sys.executable, "-c", PILOT_MAIN, "--options", str(self.options_file()),
                "--log-file", str(self.config.work_dir / f"pilot-{self.starts}.log")]
        with open(self.config.work_dir / f"pilot-{self.starts}.out", "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=self.config.work_dir, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        log.info("pilot started (pid %d), work dir %s", self.proc.pid, self.dir)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def running_jobs(self) -> int:
        if not self.alive:
            return 0
        try:
            status = json.loads((self.dir / PILOT_STATUS).read_text())
            return len(status.get("RunningJobs") or [])
        except (OSError, ValueError, AttributeError):
            return 0

    def drain(self) -> None:
        self.stop_file.touch()
        if self.alive and not self.signalled:
            self.proc.send_signal(signal.SIGTERM)
            self.signalled = 1

    def stop_now(self, grace: float) -> None:
        """Forced halt: the pilot kills its payloads and reports their jobs, then it is killed."""
        if not self.alive:
            return
        self.stop_file.touch()
        for _ in range(2 - self.signalled):
            self.proc.send_signal(signal.SIGTERM)
        self.signalled = 2
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- the loop

def private_ip(url: str) -> str:
    """The address this VM reaches the server from (no packet is sent)."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parts.hostname or "127.0.0.1", parts.port or 443))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def uptime() -> float:
    started = os.environ.get("VMDIRAC_VM_STARTED")
    if started:
        return max(0.0, time.time() - float(started))
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


class VirtualMachineMonitor:
    def __init__(self, config: VMConfig, manager: Any = None, load: LoadSource | None = None,
                 halt: Callable[[str], None] | None = None, pilot: Pilot | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.opts = config.monitor
        self._own_client = manager is None
        self.manager = manager or self._client()
        self.load = load or make_load_source(self.opts.LoadSource)
        self.halt_action = halt or make_halt_action(self.opts)
        self.pilot = pilot if pilot is not None else (Pilot(config) if self.opts.StartPilot else None)
        self.clock = clock
        self.state = MonitorState()
        self.command = Command.NONE
        self.declared = False
        self.next_report = self.next_sample = clock()
        self.heartbeats = 0
        self.halted_reason = ""
        self._stop = threading.Event()

    def _client(self) -> RPCClient:
        creds = ClientCredentials(str(self.config.credential), None, str(self.config.ca))
        return RPCClient(MANAGER, creds, urls=list(self.config.services[MANAGER]), connect_timeout=10, timeout=60)

    def stop(self) -> None:
        """Leave the loop (SIGTERM: the VM is going down anyway); no halt is declared."""
        self._stop.set()

    def run(self) -> int:
        c = self.config
        log.info("VM Monitor of instance %d (%s, pod %s, site %s): stop policy %s, halt after %g s idle under "
                 "load %g, heartbeat every %g s", c.instance_id, c.instance_name, c.pod, c.site, self.opts.StopPolicy,
                 self.opts.HaltPeriod, self.opts.MinWorkingLoad, self.opts.HeartBeatPeriod)
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:       # the monitor is the VM's only way to end itself: it must not die
                log.exception("VM Monitor step failed; going on")
            if self.halted_reason:
                return 0
            self._stop.wait(self.opts.Tick)
        log.info("VM Monitor stopped without halting the VM")
        return 0

    def step(self) -> Decision:
        """One tick: sample, report when due, decide, act."""
        now = self.clock()
        if now >= self.next_sample:
            # Ten samples a timespan are plenty; each one may read the whole of /proc.
            self.load.sample(now)
            self.next_sample = now + min(self.opts.LoadAverageTimespan, self.opts.HeartBeatPeriod) / 10
        if now >= self.next_report:
            self.next_report = now + self.opts.HeartBeatPeriod
            self.report(now)
        obs = self.observe(now)
        decision = decide(self.opts, self.state, obs)
        self.state = decision.state
        self.act(decision)
        return decision

    def observe(self, now: float) -> Observation:
        alive = self.pilot.alive if self.pilot else False
        return Observation(now=now, jobs=self.pilot.running_jobs() if self.pilot else 0,
                           load=self.load.average(now, self.opts.LoadAverageTimespan), pilot_alive=alive,
                           command=self.command, shutdown_in=self.shutdown_notice())

    def report(self, now: float) -> None:
        """Declare the VM running (until it succeeds), then heartbeat; a failure waits a period."""
        try:
            if not self.declared:
                ip = private_ip(self.config.services[MANAGER][0])
                answer = self.manager.declareInstanceRunning(ip)
                self.declared = True
                log.info("declared running (private IP %s): %s", ip, answer)
                return
            load = self.load.average(now, self.opts.LoadAverageTimespan)
            jobs = self.pilot.running_jobs() if self.pilot else 0
            answer = self.manager.instanceHeartBeat(round(load, 4), jobs, 0, 0, round(uptime(), 1))
            self.heartbeats += 1
            log.info("heartbeat %d: load %.3f, %d job(s), answer %s", self.heartbeats, load, jobs, answer)
        except IllegalTransition as e:
            # The server has this instance Halted (or in Error): it no longer counts on this VM.
            # Its running jobs may still end well: drain, then halt, as on a stop.
            log.warning("the server refuses this VM's report (%s): draining and halting", e)
            if self.command == Command.NONE:
                self.command = Command.STOP
            return
        except VMDiracError as e:
            log.warning("%s failed: %s; again in %g s", "heartbeat" if self.declared else "declareInstanceRunning",
                        e, self.opts.HeartBeatPeriod)
            return
        self.renew_credential()
        command = str((answer or {}).get("command") or "") if isinstance(answer, dict) else ""
        try:
            asked = Command(command)
        except ValueError:
            log.warning("unknown command %r from the server: ignored", command)
            return
        if asked == Command.HALT or (asked == Command.STOP and self.command == Command.NONE):
            log.info("the server asks to %s", asked)
            self.command = asked

    def renew_credential(self) -> None:
        """A fresh credential from the server when this one has less than ``RenewCredentialBefore`` left."""
        if not self.opts.RenewCredentialBefore:
            return
        try:
            left = Credential.from_files(self.config.credential).info.time_left().total_seconds()
        except VMDiracError as e:
            log.warning("cannot read the VM's credential %s: %s", self.config.credential, e)
            return
        if left > self.opts.RenewCredentialBefore:
            return
        try:
            pem = self.manager.renewInstanceCredential()
            fresh = Credential.from_files(self._write_candidate(pem)).info
        except VMDiracError as e:
            log.warning("credential renewal failed (%.0f s left): %s; again next period", left, e)
            return
        os.replace(self.config.credential.with_name(self.config.credential.name + ".new"), self.config.credential)
        log.info("credential renewed: %.0f s were left, now valid until %s", left, fresh.not_after.isoformat())
        if self._own_client:
            self.manager.close()
            self.manager = self._client()           # a new TLS context with the new credential

    def _write_candidate(self, pem: str) -> Path:
        path = self.config.credential.with_name(self.config.credential.name + ".new")
        write_private(path, pem.encode())
        return path

    def shutdown_notice(self) -> float | None:
        """Seconds left before the provider's announced shutdown (inf: no time given), or None."""
        base = os.environ.get("MACHINEFEATURES") or str(self.config.path(self.opts.MachineFeatures))
        path = Path(base) / "shutdowntime"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read %s: %s", path, e)
            return None
        try:
            return float(text) - time.time()
        except ValueError:
            return math.inf

    def act(self, decision: Decision) -> None:
        if decision.action == Action.START_PILOT and self.pilot is not None:
            log.info("%s", decision.reason)
            self.pilot.start()
        elif decision.action == Action.DRAIN:
            log.info("draining the VM: %s", decision.reason)
            if self.pilot is not None:
                self.pilot.drain()
        elif decision.action == Action.HALT:
            self.halt(decision.reason)

    def halt(self, reason: str) -> None:
        log.info("halting the VM: %s", reason)
        if self.pilot is not None:
            self.pilot.stop_now(self.opts.PilotStopGrace)
        try:
            self.manager.declareInstanceHalting()
            log.info("declared halting")
        except VMDiracError as e:
            log.warning("declareInstanceHalting failed: %s; halting anyway (the reconciler will see it)", e)
        self.halted_reason = reason
        self.halt_action(reason)
