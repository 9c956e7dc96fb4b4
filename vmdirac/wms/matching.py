"""Job requirements, resource descriptions, and DIRAC's rule for when one fits the other.

This is the rule the TaskQueueDB query implements in SQL; the pure ``matches()`` here is what
tests and the VM scheduler use to reason without a database.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from vmdirac.core.exceptions import BadRequest, InvalidArgument

# DIRAC's CPU time segments (TaskQueueDB.fitCPUTimeToSegments), in seconds.
CPU_SEGMENTS = (6 * 60, 30 * 60, 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 3 * 86400,
                4 * 86400, 6 * 86400, 8 * 86400, 10 * 86400, int(12.5 * 86400))


def fit_cpu_time(seconds: int) -> int:
    """Round a job's CPU time up to DIRAC's next segment (the last one caps it)."""
    for segment in CPU_SEGMENTS:
        if seconds <= segment:
            return segment
    return CPU_SEGMENTS[-1]


def processor_tags(cores: int) -> list[str]:
    return ["MultiProcessor", f"{cores}Processors"] if cores > 1 else []


def ram_tag(max_ram_mb: int) -> list[str]:
    return [f"{math.ceil(max_ram_mb / 1024)}GB"] if max_ram_mb > 0 else []


def _clean(values: Any) -> tuple[str, ...]:
    if values is None or values == "":
        return ()
    if isinstance(values, str):
        values = [values]
    out = sorted({str(v) for v in values if str(v) and str(v).upper() != "ANY"})
    return tuple(out)


@dataclass(frozen=True)
class JobRequirements:
    """What identifies a task queue: identical requirements, one queue."""

    owner: str
    owner_group: str
    vo: str
    cpu_time: int                       # already fitted to a segment
    sites: tuple[str, ...] = ()
    banned_sites: tuple[str, ...] = ()
    platforms: tuple[str, ...] = ()
    job_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()          # includes the processor and RAM tags

    @classmethod
    def make(cls, *, owner: str, owner_group: str, vo: str, cpu_time: int, sites=(), banned_sites=(),
             platforms=(), job_type: str = "User", tags=(), cores: int = 1, max_ram_mb: int = 0) -> JobRequirements:
        return cls(owner, owner_group, vo, fit_cpu_time(int(cpu_time)), _clean(sites), _clean(banned_sites),
                   _clean(platforms), _clean([job_type] if job_type else []),
                   _clean(list(_clean(tags)) + processor_tags(cores) + ram_tag(max_ram_mb)))

    @functools.cached_property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def to_wire(self) -> dict:
        return {"Owner": self.owner, "OwnerGroup": self.owner_group, "VO": self.vo, "CPUTime": self.cpu_time,
                "Sites": list(self.sites), "BannedSites": list(self.banned_sites),
                "Platforms": list(self.platforms), "JobTypes": list(self.job_types), "Tags": list(self.tags)}


@dataclass(frozen=True)
class ResourceDescription:
    """What a pilot offers, as it sends it to ``Matcher.requestJob``."""

    site: str = ""
    endpoint: str = ""
    image: str = ""
    platform: str = ""
    tags: tuple[str, ...] = ()
    required_tags: tuple[str, ...] = ()
    cores: int = 1
    max_ram_mb: int = 0
    cpu_time: int = 0                     # CPU time left, seconds; 0 = unlimited
    vo: str = ""
    owner: str = ""                       # set by the Matcher for user pilots
    owner_group: str = ""
    job_types: tuple[str, ...] = ()
    instance_id: str = ""
    pilot_reference: str = ""
    extra: dict = field(default_factory=dict)

    # DIRAC's keys -> our fields
    _KEYS = {"Site": "site", "Endpoint": "endpoint", "Image": "image", "Platform": "platform",
             "Tag": "tags", "Tags": "tags", "RequiredTag": "required_tags", "RequiredTags": "required_tags",
             "NumberOfProcessors": "cores", "MaxRAM": "max_ram_mb", "CPUTime": "cpu_time", "VO": "vo",
             "Owner": "owner", "OwnerGroup": "owner_group", "JobType": "job_types",
             "InstanceID": "instance_id", "PilotReference": "pilot_reference"}

    @classmethod
    def from_wire(cls, data: dict) -> ResourceDescription:
        values: dict[str, Any] = {}
        extra = {}
        for key, value in data.items():
            attr = cls._KEYS.get(key)
            if attr is None:
                extra[key] = value
                continue
            if attr in ("tags", "required_tags", "job_types"):
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise BadRequest(f"resource description: {key} must be a list of strings")
                values[attr] = tuple(value)
            elif attr in ("cores", "max_ram_mb", "cpu_time"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise BadRequest(f"resource description: {key} must be a non-negative number")
                values[attr] = int(value)
            else:
                if not isinstance(value, str):
                    raise BadRequest(f"resource description: {key} must be a string")
                values[attr] = value
        if values.get("cores", 1) < 1:
            raise InvalidArgument("resource description: NumberOfProcessors must be at least 1")
        return cls(**values, extra=extra)

    def all_tags(self) -> frozenset[str]:
        """The resource's tags with DIRAC's processor and RAM tags added."""
        tags = set(self.tags)
        tags.update(f"{n}Processors" for n in range(1, self.cores + 1))
        if self.cores > 1:
            tags.add("MultiProcessor")
        tags.update(f"{n}GB" for n in range(1, self.max_ram_mb // 1024 + 1))
        return frozenset(tags)


def matches(req: JobRequirements, res: ResourceDescription) -> bool:
    """DIRAC's matching rule (DESIGN.md: Task queues and matching)."""
    if res.cpu_time and req.cpu_time > res.cpu_time:
        return False
    if res.vo and req.vo != res.vo:
        return False
    if res.owner and req.owner != res.owner:
        return False
    if res.owner_group and req.owner_group != res.owner_group:
        return False
    if req.sites and res.site not in req.sites:
        return False
    if res.site and res.site in req.banned_sites:
        return False
    if req.platforms and res.platform not in req.platforms:
        return False
    if req.job_types and res.job_types and not set(req.job_types) & set(res.job_types):
        return False
    tags = res.all_tags()
    if not set(req.tags) <= tags:
        return False
    return set(res.required_tags) <= set(req.tags)
