"""WorkloadManagement/SandboxCleaningAgent: deletes the sandboxes no job needs any more.

Two kinds, as in DIRAC: sandboxes never assigned to a job, after ``UnassignedGraceHours`` since
their last upload or download (the user may still submit the job), and sandboxes whose jobs were
all deleted, after ``AssignedGraceHours`` (DIRAC: at once). Gather the unused sandboxes, decide
(a pure function), act: each file is deleted before its row, while the row is locked, and the row
goes at the commit; a crash in between leaves a row without a file, still unused, which the next
cycle deletes. The other order would leak files that no row points to any more.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from vmdirac.core.agent import Agent, AgentOptions
from vmdirac.core.db import utcnow
from vmdirac.db.sandbox_metadata_db import SandboxInfo, SandboxMetadataDB, UnusedSandbox
from vmdirac.db.sandbox_files import SandboxFiles, store_options

BATCH = 500                      # sandboxes per transaction
STALE_UPLOAD_S = 24 * 3600       # a half-received upload older than this was abandoned


@dataclass(frozen=True)
class SandboxCleaningOptions(AgentOptions):
    PollingTime: float = 3600.0
    UnassignedGraceHours: float = 24.0
    AssignedGraceHours: float = 0.0
    MaxDeletionsPerCycle: int = 10000


@dataclass(frozen=True)
class Cutoffs:
    """Last-access times before which an unused sandbox goes."""

    unassigned_before: dt.datetime
    assigned_before: dt.datetime

    @classmethod
    def at(cls, now: dt.datetime, opts: SandboxCleaningOptions) -> Cutoffs:
        return cls(now - dt.timedelta(hours=opts.UnassignedGraceHours),
                   now - dt.timedelta(hours=opts.AssignedGraceHours))

    @property
    def latest(self) -> dt.datetime:
        return max(self.unassigned_before, self.assigned_before)


def decide(candidates: list[UnusedSandbox], cutoffs: Cutoffs, limit: int) -> list[UnusedSandbox]:
    """The unused sandboxes past their grace, oldest first, at most ``limit``."""
    due = [c for c in candidates
           if c.last_access < (cutoffs.assigned_before if c.assigned else cutoffs.unassigned_before)]
    return sorted(due, key=lambda c: (c.last_access, c.row_id))[:max(0, limit)]


@dataclass(frozen=True)
class CleaningReport:
    removed: list[SandboxInfo]
    kept: int          # due, but in use again or not removable when acted on
    swept_uploads: int

    def line(self) -> str:
        never = sum(1 for s in self.removed if not s.assigned)
        return (f"removed {len(self.removed)} sandbox(es), {sum(s.size for s in self.removed)} bytes "
                f"({never} never assigned, {len(self.removed) - never} of deleted jobs); "
                f"{self.kept} kept (in use again or not removable); "
                f"{self.swept_uploads} abandoned upload(s) swept")


class SandboxCleaningAgent(Agent):
    system = "WorkloadManagement"
    name = "SandboxCleaningAgent"
    Options = SandboxCleaningOptions

    def initialize(self) -> None:
        self.db = SandboxMetadataDB(self.context.engine)
        self.db.create_tables()

    def execute(self) -> None:
        opts = self.options
        cutoffs = Cutoffs.at(utcnow(), opts)
        candidates = self.db.unused_sandboxes(cutoffs.latest, opts.MaxDeletionsPerCycle)
        due = decide(candidates, cutoffs, opts.MaxDeletionsPerCycle)
        report = self.act(due, cutoffs)
        self.log.info("%s", report.line())

    def act(self, due: list[UnusedSandbox], cutoffs: Cutoffs) -> CleaningReport:
        files = SandboxFiles.configured(store_options(self.context.config.current), self.context.paths.root)
        removed: list[SandboxInfo] = []
        for i in range(0, len(due), BATCH):
            ids = [c.row_id for c in due[i:i + BATCH]]
            removed += self.db.delete_unused(ids, cutoffs.unassigned_before, cutoffs.assigned_before,
                                             files.remove)
        return CleaningReport(removed, len(due) - len(removed), files.sweep_incoming(STALE_UPLOAD_S))
