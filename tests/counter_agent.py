"""A test agent that records its cycles in files, to watch the agent base from outside."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vmdirac.core.agent import Agent, AgentOptions


@dataclass(frozen=True)
class CounterOptions(AgentOptions):
    Dir: str = ""
    FailOn: int = 0          # this cycle raises
    WaitForGo: bool = False  # a cycle waits for <Dir>/go before it ends


class CounterAgent(Agent):
    system = "Test"
    name = "Counter"
    Options = CounterOptions

    def execute(self) -> None:
        opts = self.options
        log = Path(opts.Dir) / "cycles.log"
        with log.open("a") as fh:
            fh.write(f"start {self.cycles}\n")
        if opts.FailOn == self.cycles:
            raise RuntimeError(f"cycle {self.cycles} fails on purpose")
        if opts.WaitForGo:
            deadline = time.monotonic() + 30
            while not (Path(opts.Dir) / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        with log.open("a") as fh:
            fh.write(f"end {self.cycles}\n")
