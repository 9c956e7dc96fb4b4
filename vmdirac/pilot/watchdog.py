"""The Watchdog: what a payload consumes, read from ``/proc``, and the limits it must keep.

A payload runs as the leader of its own session (``setsid``), so every process it starts shares
its session id unless it deliberately escapes with ``setsid`` of its own. CPU time is the sum of
``utime + stime + cutime + cstime`` of the session's live processes (a child's time is folded
into its parent's ``cutime`` when the parent reaps it), kept as the highest value seen so that it
never goes backwards; the leader's own ``wait4`` figures complete it at the end.

``verdict`` is the pure decision (usage and limits in, a reason to kill out); ``Watchdog`` is
the small stateful part that samples and remembers.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

# What the job ends with when a limit is hit (Failed / <this>).
CPU_EXCEEDED = "Watchdog identified this job as exceeding its CPU time"
WALL_EXCEEDED = "Job has exceeded maximum wall clock time"   # DIRAC's JobMinorStatus


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgrp: int
    session: int
    cpu_s: float       # own and reaped children's user + system time
    vsize: int         # bytes
    rss: int           # bytes


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed; ``None`` when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    rest = text[text.rfind(")") + 2:].split()
    field = lambda n: int(rest[n - 3])  # noqa: E731  (n is the 1-based field number of proc(5))
    try:
        cpu = (field(14) + field(15) + field(16) + field(17)) / _TICKS
        return ProcStat(pid, field(4), field(5), field(6), cpu, field(23), field(24) * _PAGE)
    except (IndexError, ValueError):
        return None


def session_processes(session: int) -> list[ProcStat]:
    """Every live process whose session id is ``session``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat.session == session:
                out.append(stat)
    return out


def signal_session(session: int, sig: int) -> int:
    """Send ``sig`` to the process group ``session`` and to every process of the session (a
    payload may have made process groups of its own). Call it only while the session leader is
    not yet reaped: until then its id cannot be given to another process. Returns how many
    processes were signalled."""
    try:
        os.killpg(session, sig)
    except (ProcessLookupError, PermissionError):
        pass
    count = 0
    for proc in session_processes(session):
        try:
            os.kill(proc.pid, sig)
            count += 1
        except (ProcessLookupError, PermissionError):
            pass
    return count


@dataclass(frozen=True)
class Usage:
    """One sample of a payload's consumption."""

    cpu_s: float
    wall_s: float
    rss_mb: float
    vsize_mb: float
    processes: int

    def heartbeat(self, load: float, disk_mb: int) -> dict[str, float | int]:
        """The dynamic data of a heartbeat, under DIRAC's names (CPU and wall time in seconds,
        memory in MB)."""
        return {"CPUConsumed": round(self.cpu_s, 2), "WallClockTime": round(self.wall_s, 1),
                "MemoryUsed": round(self.rss_mb, 1), "Vsize": round(self.vsize_mb, 1),
                "LoadAverage": round(load, 2), "AvailableDiskSpace": disk_mb}


@dataclass(frozen=True)
class Limits:
    cpu_s: float = 0.0      # the JDL's CPUTime; 0: none
    wall_s: float = 0.0     # 0: none


def verdict(usage: Usage, limits: Limits) -> str | None:
    """Why the payload must be killed now (the job's minor status), or ``None``."""
    if limits.cpu_s and usage.cpu_s > limits.cpu_s:
        return CPU_EXCEEDED
    if limits.wall_s and usage.wall_s > limits.wall_s:
        return WALL_EXCEEDED
    return None


class Watchdog:
    """Samples one payload session and checks it against its limits."""

    def __init__(self, session: int, limits: Limits, started: float | None = None) -> None:
        self.session = session
        self.limits = limits
        self.started = time.monotonic() if started is None else started
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0
        self.last = Usage(0.0, 0.0, 0.0, 0.0, 0)

    def sample(self) -> Usage:
        procs = session_processes(self.session)
        self.cpu_s = max(self.cpu_s, sum(p.cpu_s for p in procs))
        rss = sum(p.rss for p in procs) / MB
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        self.last = Usage(self.cpu_s, time.monotonic() - self.started, rss,
                          sum(p.vsize for p in procs) / MB, len(procs))
        return self.last

    def check(self) -> tuple[Usage, str | None]:
        usage = self.sample()
        return usage, verdict(usage, self.limits)

    def finish(self, leader_rusage: os.struct_rusage | None) -> Usage:
        """The final figures, once the leader has been reaped with ``wait4``."""
        if leader_rusage is not None:
            self.cpu_s = max(self.cpu_s, leader_rusage.ru_utime + leader_rusage.ru_stime)
        self.last = Usage(self.cpu_s, time.monotonic() - self.started, self.last.rss_mb,
                          self.last.vsize_mb, 0)
        return self.last


def describe_exit(status: int) -> tuple[int, str]:
    """``(exit code, text)`` from a ``wait`` status; a signal gives ``-signum``, as ``subprocess``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return -sig, f"killed by signal {name}"
    code = os.WEXITSTATUS(status)
    return code, f"exit code {code}"
