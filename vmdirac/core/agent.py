"""The agent base: a loop of cycles, one at a time, every ``PollingTime`` seconds.

A cycle that raises is logged and the next one runs. ``stop()`` (SIGTERM) lets the running cycle
finish and ends the loop; ``wake()`` starts the next cycle now (new work, a test). Subclasses
implement ``execute()``, ideally as: gather state, decide (a pure function), act.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from vmdirac.core.config import options


@dataclass(frozen=True)
class AgentOptions:
    """Options every agent has; an agent's own ``Options`` dataclass extends this one."""

    PollingTime: float = 120.0
    MaxCycles: int = 0          # 0: run until stopped
    Enabled: bool = True
    Module: str = ""            # "package.module:Class" for an agent of an extension


class Agent:
    system: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type] = AgentOptions

    def __init__(self, context: Any) -> None:
        self.context = context
        self.log = logging.getLogger(f"vmdirac.agent.{self.full_name()}")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.cycles = 0
        self.failed_cycles = 0

    @classmethod
    def full_name(cls) -> str:
        return f"{cls.system}/{cls.name}"

    @property
    def options(self) -> Any:
        """This agent's options from the current configuration (re-read every cycle)."""
        path = f"Systems/{self.system}/Agents/{self.name}"
        return options(self.Options, self.context.config.current.get(path), path)

    def initialize(self) -> None:
        """Anything to do once before the first cycle."""

    def execute(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self, max_cycles: int | None = None) -> None:
        """Run cycles until stopped or ``max_cycles`` (default: the ``MaxCycles`` option) ran."""
        self.initialize()
        self.log.info("started")
        while not self._stopping.is_set():
            opts = self.options
            self._wake.clear()
            start = time.monotonic()
            self.cycles += 1
            try:
                self.execute()
                self.log.info("cycle %d done in %.3f s", self.cycles, time.monotonic() - start)
            except Exception:
                self.failed_cycles += 1
                self.log.exception("cycle %d failed after %.3f s; the next cycle will run",
                                   self.cycles, time.monotonic() - start)
            limit = opts.MaxCycles if max_cycles is None else max_cycles
            if limit and self.cycles >= limit:
                break
            self._wake.wait(max(0.0, opts.PollingTime - (time.monotonic() - start)))
        self.log.info("stopped after %d cycle(s)", self.cycles)
