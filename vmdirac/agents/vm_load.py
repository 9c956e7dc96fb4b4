"""Where the VM Monitor reads the VM's load: the machine's ``/proc/loadavg`` on a VM of its own,
or on the local cloud the CPU used by the VM's own processes (the machine's load is shared by
every local VM there)."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Callable, Protocol

from vmdirac.core.exceptions import ConfigurationError


class LoadSource(Protocol):
    def sample(self, now: float) -> None: ...

    def average(self, now: float, timespan: float) -> float: ...


class LoadAvgSource:
    """The machine's run-queue load (``/proc/loadavg``, 1-minute figure), averaged over the
    samples of the timespan: right on a VM of its own."""

    def __init__(self, path: str = "/proc/loadavg") -> None:
        self.path = path
        self.samples: collections.deque[tuple[float, float]] = collections.deque()

    def sample(self, now: float) -> None:
        try:
            value = float(Path(self.path).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        self.samples.append((now, value))

    def average(self, now: float, timespan: float) -> float:
        while self.samples and self.samples[0][0] < now - timespan:
            self.samples.popleft()
        return sum(v for _, v in self.samples) / len(self.samples) if self.samples else 0.0


class CPUSource:
    """CPU seconds used per second by a set of processes (cores kept busy), from a cumulative
    counter sampled each tick; the counter is kept monotonic (a process between its exit and
    its parent's reaping drops out of the sum for a moment)."""

    def __init__(self, counter: Callable[[], float]) -> None:
        self.counter = counter
        self.samples: collections.deque[tuple[float, float]] = collections.deque()

    def sample(self, now: float) -> None:
        value = self.counter()
        if self.samples:
            value = max(value, self.samples[-1][1])
        self.samples.append((now, value))

    def average(self, now: float, timespan: float) -> float:
        while len(self.samples) > 2 and self.samples[1][0] <= now - timespan:
            self.samples.popleft()
        if len(self.samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


def vm_processes_source(leader: int) -> CPUSource:
    """The local cloud's VM: every process under its init (payloads included), except the own
    time of the init and of this monitor (bookkeeping, not work)."""
    from vmdirac.drivers.local_vm import vm_cpu_seconds

    me = os.getpid()
    return CPUSource(lambda: vm_cpu_seconds(leader, exclude_own=(leader, me)))


def make_load_source(kind: str) -> LoadSource:
    leader = os.environ.get("VMDIRAC_VM_PID", "")
    if kind == "auto":
        kind = "vm-processes" if leader else "loadavg"
    if kind == "loadavg":
        return LoadAvgSource()
    if kind == "vm-processes":
        return vm_processes_source(int(leader) if leader else os.getpgid(0))
    raise ConfigurationError(f"Monitor/LoadSource: auto, loadavg or vm-processes, not {kind!r}")
