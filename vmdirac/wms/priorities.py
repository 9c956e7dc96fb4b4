"""Task-queue priorities, as DIRAC's TaskQueueDB computes them.

A group's ``JobShare`` is split equally among its owners with waiting work; an owner's share is
split among their task queues in proportion to the summed user priority of their jobs. The
Matcher then picks a queue at random with these weights, so every owner gets work in proportion
to the share, whatever the number of jobs each submitted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueLoad:
    tq_id: int
    owner: str
    owner_group: str
    priority_sum: float      # sum of the user priorities of its waiting jobs (>= jobs when all >= 1)


def tq_priorities(queues: list[QueueLoad], group_shares: dict[str, float],
                  default_share: float = 1000.0) -> dict[int, float]:
    """Priority of each queue with waiting jobs; queues without work are left out."""
    owners: dict[str, set[str]] = defaultdict(set)
    by_owner: dict[tuple[str, str], list[QueueLoad]] = defaultdict(list)
    for q in queues:
        if q.priority_sum <= 0:
            continue
        owners[q.owner_group].add(q.owner)
        by_owner[(q.owner_group, q.owner)].append(q)
    out: dict[int, float] = {}
    for (group, _owner), qs in by_owner.items():
        share = group_shares.get(group, default_share) / len(owners[group])
        total = sum(q.priority_sum for q in qs)
        for q in qs:
            out[q.tq_id] = share * q.priority_sum / total
    return out
