"""The VM Monitor's decision, pure: what the options, what the monitor remembers and what it
sees this tick (jobs, load, the server's command, a provider's shutdown notice) say to do: start
the pilot, drain, halt, or nothing. ``agents.vm_monitor`` gathers and acts around it."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum


@dataclass(frozen=True)
class MonitorOptions:
    StopPolicy: str = "Elastic"          # Elastic | Never
    HaltPeriod: float = 600.0            # VMDIRAC's defaults
    MinWorkingLoad: float = 0.01
    HeartBeatPeriod: float = 300.0
    LoadAverageTimespan: float = 60.0
    WorkDir: str = "/var/lib/vmdirac"
    MachineFeatures: str = "/etc/machinefeatures"   # $MACHINEFEATURES wins when set
    StartPilot: bool = True              # False on ad-hoc images: the monitor only
    PilotRestartDelay: float = 60.0      # Never: a pilot that ended is started again after this
    PilotStopGrace: float = 30.0         # forced halt: seconds for the pilot to fail its jobs cleanly
    LoadSource: str = "auto"             # auto | loadavg | vm-processes
    HaltAction: str = "auto"             # auto | halt-file | shutdown
    HaltCommand: tuple[str, ...] = ("shutdown", "-h", "now")
    Tick: float = 1.0                    # seconds between load samples and decisions
    RenewCredentialBefore: float = 6 * 3600.0   # renew the VM's credential this long before it expires; 0: never



class Action(StrEnum):
    NONE = "none"
    START_PILOT = "start-pilot"
    DRAIN = "drain"
    HALT = "halt"


class Command(StrEnum):
    """What the server's heartbeat answer may ask."""

    NONE = ""
    STOP = "stop"
    HALT = "halt"


@dataclass(frozen=True)
class Observation:
    now: float                       # monotonic seconds
    jobs: int                        # jobs the pilot runs
    load: float                      # averaged over LoadAverageTimespan
    pilot_alive: bool
    command: Command = Command.NONE  # the strongest the server has asked so far
    shutdown_in: float | None = None  # a provider's notice: seconds left (inf: no time given)


@dataclass(frozen=True)
class MonitorState:
    idle_since: float | None = None
    draining: bool = False
    drain_reason: str = ""
    pilot_started: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    state: MonitorState


def decide(opts: MonitorOptions, state: MonitorState, obs: Observation) -> Decision:
    """What to do now. Pure: the options, what the monitor remembers, and what it sees."""
    if obs.command == Command.HALT:
        return Decision(Action.HALT, "the server asked to halt", state)
    if obs.shutdown_in is not None and obs.shutdown_in <= 0:
        return Decision(Action.HALT, "the shutdown time of the provider's notice is reached", state)
    if not state.draining:
        reason = ""
        if obs.command == Command.STOP:
            reason = "the server asked to stop"
        elif obs.shutdown_in is not None:
            reason = "the provider announced a shutdown" + (
                f" in {obs.shutdown_in:.0f} s" if math.isfinite(obs.shutdown_in) else "")
        else:
            idle = obs.jobs == 0 and obs.load < opts.MinWorkingLoad
            since = (obs.now if state.idle_since is None else state.idle_since) if idle else None
            state = replace(state, idle_since=since)
            if opts.StopPolicy == "Elastic" and since is not None and obs.now - since >= opts.HaltPeriod:
                reason = (f"idle for {obs.now - since:.0f} s (no job, load {obs.load:.3f} < "
                          f"{opts.MinWorkingLoad:g})")
        if reason:
            return Decision(Action.DRAIN, reason, replace(state, draining=True, drain_reason=reason))
    if state.draining:
        # Halt once the pilot has exited: a job it was given while told to drain still runs.
        if not obs.pilot_alive and obs.jobs == 0:
            return Decision(Action.HALT, f"drained ({state.drain_reason})", state)
        return Decision(Action.NONE, f"draining: {obs.jobs} job(s) running", state)
    if opts.StartPilot and not obs.pilot_alive:
        if state.pilot_started is None:
            return Decision(Action.START_PILOT, "starting the pilot", replace(state, pilot_started=obs.now))
        if opts.StopPolicy == "Never" and obs.now - state.pilot_started >= opts.PilotRestartDelay:
            return Decision(Action.START_PILOT, "the pilot ended; stop policy Never starts another",
                            replace(state, pilot_started=obs.now))
    return Decision(Action.NONE, "", state)
