"""The typed, validated view of a job's JDL (``JobDescription``), and parametric jobs: one JDL
with ``Parameters`` expanded into a job per value, as DIRAC's ``generateParametricJobs`` does."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vmdirac.core.exceptions import InvalidJDL, QuotaExceeded
from vmdirac.wms.jdl import PARAMETRIC_KEYS, Expression, Value, show_value, dumps, normalise, parse_with_lines

DEFAULT_CPU_TIME = 86400  # seconds, DIRAC's default
DEFAULT_PRIORITY = 1
PRIORITY_RANGE = (0, 10)  # DIRAC's default JobDescription bounds; outside them we refuse, as DIRAC does
# DIRAC's generateParametricJobs starts a numeric sequence at 1 when ParameterStart is not given.
DEFAULT_PARAMETER_START = 1
_MAX_PARAMETER = 2**63  # a numeric parameter must fit a signed 64-bit column


@dataclass(frozen=True)
class JobDescription:
    """The fields the WMS acts on, validated, plus ``attributes``: the whole mapping it came from.

    Build it with ``from_jdl`` or ``from_attrs``; ``to_jdl`` writes ``attributes`` back, so unknown
    attributes survive. Processors follow DIRAC's ``Job.setNumberOfProcessors``:
    ``NumberOfProcessors = N`` asks for exactly N (a Min above or a Max below N is refused);
    otherwise ``MinNumberOfProcessors`` (default 1) is the least the job needs and
    ``MaxNumberOfProcessors`` the most it can use (``None``: whatever the slot has).
    """

    executable: str
    arguments: str = ""
    job_name: str = "Name"  # DIRAC's default job name
    job_group: str = ""
    job_type: str = "User"
    input_sandbox: tuple[str, ...] = ()
    output_sandbox: tuple[str, ...] = ()
    std_output: str = "std.out"
    std_error: str = "std.err"
    cpu_time: int = DEFAULT_CPU_TIME
    site: tuple[str, ...] = ()  # empty: any site
    banned_sites: tuple[str, ...] = ()
    platform: tuple[str, ...] = ()  # empty: any platform
    tags: tuple[str, ...] = ()
    number_of_processors: int = 1
    max_number_of_processors: int | None = None
    max_ram: int = 0  # MB; 0 means not set
    priority: int = DEFAULT_PRIORITY
    attributes: Mapping[str, Value] = field(default_factory=dict, hash=False, repr=False)

    @classmethod
    def from_jdl(cls, text: str) -> JobDescription:
        attrs, lines = parse_with_lines(text)
        try:
            return cls.from_attrs(attrs)
        except InvalidJDL as e:
            line = lines.get(str(e.ids.get("attribute")))
            if line is None:
                raise
            raise InvalidJDL(f"line {line}: {e.message}", **e.ids) from None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Value]) -> JobDescription:
        a = normalise(attrs)
        executable = _text(a, "Executable", "").strip()
        if not executable:
            raise InvalidJDL("Executable is required and must not be empty", attribute="Executable")
        site = _texts(a, "Site", drop={"ANY"})
        banned = _texts(a, "BannedSites")
        if site and banned:
            # As DIRAC: banned sites are taken out of Site; nothing left means nowhere to run.
            site = tuple(s for s in site if s not in banned)
            if not site:
                raise InvalidJDL("every Site is in BannedSites: the job could run nowhere", attribute="Site")
        cores, max_cores = _processors(a)
        low, high = PRIORITY_RANGE
        return cls(
            executable=executable,
            arguments=_text(a, "Arguments", ""),
            job_name=_text(a, "JobName", "Name"),
            job_group=_text(a, "JobGroup", ""),
            job_type=_text(a, "JobType", "User").strip() or "User",
            input_sandbox=_texts(a, "InputSandbox"),
            output_sandbox=_texts(a, "OutputSandbox"),
            std_output=_text(a, "StdOutput", "std.out"),
            std_error=_text(a, "StdError", "std.err"),
            cpu_time=_integer(a, "CPUTime", DEFAULT_CPU_TIME, 1, None, "a positive integer"),
            site=site,
            banned_sites=banned,
            platform=_texts(a, "Platform", drop={"ANY"}),
            tags=_texts(a, "Tags"),
            number_of_processors=cores,
            max_number_of_processors=max_cores,
            max_ram=_integer(a, "MaxRAM", 0, 0, None, "a non-negative integer (MB)"),
            priority=_integer(a, "Priority", DEFAULT_PRIORITY, low, high, f"an integer from {low} to {high}"),
            attributes=MappingProxyType(copy.deepcopy(a)),
        )

    def to_jdl(self) -> str:
        return dumps(self.attributes)


def _text(a: Mapping[str, Value], key: str, default: str) -> str:
    value = a.get(key, default)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise InvalidJDL(f"{key} must be a string, got {show_value(value)}", attribute=key)


def _texts(a: Mapping[str, Value], key: str, drop: set[str] | None = None) -> tuple[str, ...]:
    """A single string or a list, as DIRAC accepts; duplicates and empty entries dropped."""
    value = a.get(key, [])
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise InvalidJDL(f"{key} must be a string or a list of strings, got {show_value(value)}",
                             attribute=key)
        # DIRAC splits a single string on commas (Site = "A,B" is two sites); users rely on it.
        out.extend(p.strip() for p in (item.split(",") if isinstance(value, str) else [str(item)]))
    drop = drop or set()
    return tuple(dict.fromkeys(p for p in out if p and p.upper() not in drop))


def _to_int(value: object) -> int | None:
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.isascii():  # CPUTime = "3600", as DIRAC's getAttributeInt
        try:
            return int(value)
        except ValueError:
            return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _integer(a: Mapping[str, Value], key: str, default: int, low: int, high: int | None, what: str) -> int:
    value = a.get(key, default)
    number = _to_int(value)
    if number is None or number < low or (high is not None and number > high):
        raise InvalidJDL(f"{key} must be {what}, got {show_value(value)}", attribute=key)
    return number


def _processors(a: Mapping[str, Value]) -> tuple[int, int | None]:
    """(least, most) cores, as ``JobDescription`` documents; DIRAC silently picks one of two
    contradicting values, we refuse them."""
    exact, low, high = (
        _integer(a, key, 1, 1, None, "a positive integer") if key in a else None
        for key in ("NumberOfProcessors", "MinNumberOfProcessors", "MaxNumberOfProcessors")
    )
    if exact is not None:
        if (low or 1) > exact or (high or exact) < exact:
            raise InvalidJDL(f"NumberOfProcessors = {exact} contradicts Min/MaxNumberOfProcessors",
                             attribute="NumberOfProcessors")
        return exact, exact
    if high is not None and high < (low or 1):
        raise InvalidJDL(f"MaxNumberOfProcessors = {high} is below MinNumberOfProcessors = {low}",
                         attribute="MaxNumberOfProcessors")
    return low or 1, high


# ---------------------------------------------------------------- parametric jobs

_MARK_RE = re.compile(r"%[sn]")


def parameter_vector_length(attrs: Mapping[str, Value]) -> int | None:
    """How many jobs a parametric description makes; ``None`` when it is not parametric."""
    a = normalise(attrs)
    if "Parameters" not in a:
        return None
    value = a["Parameters"]
    if isinstance(value, list):
        if not value:
            raise InvalidJDL("Parameters is an empty list", attribute="Parameters")
        return len(value)
    count = _to_int(value)
    if count is None or count < 1:
        raise InvalidJDL(
            f"Parameters must be a list or a positive integer, got {show_value(value)}", attribute="Parameters"
        )
    return count


def expand_parametric(attrs: Mapping[str, Value], max_jobs: int) -> list[dict[str, Value]]:
    """One attribute mapping per job; a description without ``Parameters`` gives itself.

    In every string (in lists and raw expressions too: DIRAC substitutes in the whole text)
    ``%s`` becomes the parameter and ``%n`` its 0-based index, zero-padded to the width of the
    last index as DIRAC does; ``%j`` stays for ``substitute_job_id``. The ``Parameter*`` inputs
    are replaced by ``Parameter`` (the value) and ``ParameterNumber`` (the index).
    """
    a = normalise(attrs)
    count = parameter_vector_length(a)
    if count is None:
        return [copy.deepcopy(a)]
    if count > max_jobs:  # before generating anything: Parameters = 10**9 must cost nothing
        raise QuotaExceeded(f"parametric job would make {count} jobs, over the cap of {max_jobs}")
    for key in ("Parameter", "ParameterNumber"):
        if key in a:
            raise InvalidJDL(f"{key} is set by the parametric expansion, not by the JDL", attribute=key)
    values = _parameter_values(a, count)
    template = {k: v for k, v in a.items() if k not in PARAMETRIC_KEYS}
    width = len(str(count - 1))
    jobs: list[dict[str, Value]] = []
    for index, value in enumerate(values):
        marks = {"%s": show_value(value) if isinstance(value, bool) else str(value), "%n": str(index).zfill(width)}

        def fill(s: str) -> str:  # one pass, so a value containing "%n" is not substituted again
            return _MARK_RE.sub(lambda m: marks[m.group()], s)

        job = {k: _map_strings(v, fill) for k, v in template.items()}
        job["Parameter"] = value
        job["ParameterNumber"] = index
        jobs.append(job)
    return jobs


def substitute_job_id(attrs: Mapping[str, Value], job_id: int) -> dict[str, Value]:
    """``%j`` replaced by the job id everywhere, once the JobDB has given one."""
    return {k: _map_strings(v, lambda s: s.replace("%j", str(job_id))) for k, v in attrs.items()}


def _map_strings(value: Value, fn: Callable[[str], str]) -> Value:
    if isinstance(value, str):
        return fn(value) if "%" in value else value
    if isinstance(value, Expression):
        return Expression(fn(value.text)) if "%" in value.text else value
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def _parameter_values(a: Mapping[str, Value], count: int) -> list[Value]:
    value = a["Parameters"]
    if isinstance(value, list):
        extra = [k for k in PARAMETRIC_KEYS[1:] if k in a]
        if extra:
            raise InvalidJDL(f"{extra[0]} applies only when Parameters is a number", attribute=extra[0])
        for item in value:
            if isinstance(item, list):
                raise InvalidJDL(f"Parameters must hold strings or numbers, got {show_value(item)}",
                                 attribute="Parameters")
        return list(value)
    start = _parameter_number(a, "ParameterStart", DEFAULT_PARAMETER_START)
    step = _parameter_number(a, "ParameterStep", 0)
    factor = _parameter_number(a, "ParameterFactor", 1)
    # As DIRAC: the first value already has the type of the rest (a float step or factor makes floats).
    current: int | float = float(start) if isinstance(step, float) or isinstance(factor, float) else start
    out: list[Value] = []
    for index in range(count):
        if index:
            current = current * factor + step
        if current != current or abs(current) >= _MAX_PARAMETER:  # NaN, or would overflow a BIGINT
            raise InvalidJDL(f"parameter number {index} is out of range (2**63)", attribute="Parameters")
        out.append(current)
    return out


def _parameter_number(a: Mapping[str, Value], key: str, default: int) -> int | float:
    value = a.get(key, default)
    number: int | float | None = value if isinstance(value, float) else _to_int(value)
    if number is None and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise InvalidJDL(f"{key} must be a number, got {show_value(value)}", attribute=key)
    return number
