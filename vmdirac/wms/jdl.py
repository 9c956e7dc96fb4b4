"""DIRAC's job description language (JDL): parse, write back, validate, expand parametric jobs.

Users write ClassAd-style text for ``dirac-wms-job-submit job.jdl``. ``parse`` turns it into an
ordered mapping that keeps every attribute (DIRAC keeps the ones it does not know, so do we);
``JobDescription`` is the typed, validated view of the fields the WMS acts on.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from vmdirac.core.exceptions import InvalidJDL, QuotaExceeded


@dataclass(frozen=True)
class Expression:
    """A value that is not a literal (``other.Site == "X"``): kept verbatim and written back as is."""

    text: str

    def __str__(self) -> str:
        return self.text


# A list holds literals only: ``{a, "b"}`` (an identifier inside) reads as one Expression.
LiteralValue = str | int | float | bool | list["LiteralValue"]
Value = LiteralValue | Expression

MAX_DEPTH = 32  # lists/sub-ClassAds nested deeper than this are refused: no real JDL comes close
DEFAULT_CPU_TIME = 86400  # seconds, DIRAC's default
DEFAULT_PRIORITY = 1
PRIORITY_RANGE = (0, 10)  # DIRAC's default JobDescription bounds; outside them we refuse, as DIRAC does
# DIRAC's generateParametricJobs starts a numeric sequence at 1 when ParameterStart is not given.
DEFAULT_PARAMETER_START = 1
PARAMETRIC_KEYS = ("Parameters", "ParameterStart", "ParameterStep", "ParameterFactor")
_MAX_PARAMETER = 2**63  # a numeric parameter must fit a signed 64-bit column

# Known attributes, spelled as DIRAC writes them. ClassAd names are case-insensitive, so these are
# matched in any case and normalised; unknown names are kept exactly as written.
KNOWN_ATTRIBUTES = (
    "Executable", "Arguments", "JobName", "JobGroup", "JobType", "InputSandbox", "OutputSandbox",
    "StdOutput", "StdError", "CPUTime", "Site", "BannedSites", "Platform", "Tags",
    "NumberOfProcessors", "MinNumberOfProcessors", "MaxNumberOfProcessors", "MaxRAM", "Priority",
    *PARAMETRIC_KEYS, "Parameter", "ParameterNumber", "InputData", "InputDataPolicy", "OutputData",
    "OutputSE", "OutputPath", "LogLevel", "ExecutionEnvironment", "GridCE", "JobConfigArgs",
    "JobID", "Owner", "OwnerDN", "OwnerGroup", "VirtualOrganization", "Requirements", "Origin",
)
_CANONICAL = {name.lower(): name for name in KNOWN_ATTRIBUTES}


def canonical_name(name: str) -> str:
    """DIRAC's spelling of a known attribute name in any case; other names unchanged."""
    return _CANONICAL.get(name.lower(), name)


# ---------------------------------------------------------------- reading

# One alternation tried at each position; no nested quantifiers, so scanning is linear. The
# "bad" alternatives only match where the good ones before them failed.
_TOKEN_RE = re.compile(
    r"""(?P<space>[\s\ufeff]+)
    |(?P<comment>//[^\n]*|\#[^\n]*|/\*.*?\*/)
    |(?P<badcomment>/\*)
    |(?P<string>"(?:[^"\\\n]|\\[^\n])*")
    |(?P<badstring>")
    |(?P<number>(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<op>=\?=|=!=|==|!=|<=|>=|&&|\|\||[-+*/%<>!?:().^~&|@$'])
    |(?P<punct>[\[\]{}=;,])
    |(?P<badchar>.)""",
    re.VERBOSE | re.DOTALL,
)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_ESCAPE_RE = re.compile(r"\\(.)")
# An unknown escape (``"C:\data"``) keeps its backslash: DIRAC does not interpret escapes at all.
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
_QUOTE = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_CLOSER_OF = {"]": "[", "}": "{"}
_NOT_LITERAL = object()


class _Tok(NamedTuple):
    """A token; a punctuation mark is known by its text alone (``;`` is never part of another)."""

    kind: str
    text: str
    start: int
    end: int


def _error(text: str, pos: int, message: str, column: bool = False) -> InvalidJDL:
    """The error for ``text[pos]``; lines are counted here, only once something is wrong."""
    where = f"line {text.count(chr(10), 0, pos) + 1}"
    if column:
        where += f", column {pos - text.rfind(chr(10), 0, pos)}"
    return InvalidJDL(f"{where}: {message}")


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    append, new = toks.append, tuple.__new__
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup or ""
        if kind == "space" or kind == "comment":
            continue
        if kind.startswith("bad"):
            if kind == "badchar":
                raise _error(text, m.start(), f"unexpected character {m.group()!r}", column=True)
            raise _error(text, m.start(), f"unterminated {kind[3:]}")
        # tuple.__new__ skips the NamedTuple's Python-level constructor: measurably faster on big input.
        append(new(_Tok, (kind, m.group(), m.start(), m.end())))
    return toks


def parse(text: str) -> dict[str, Value]:
    """The attributes of a JDL in order of appearance; ``InvalidJDL`` names the line on error."""
    return _parse(text)[0]


def _parse(text: str) -> tuple[dict[str, Value], dict[str, int]]:
    """Attributes and the line each was defined on (so later checks can name the line too)."""
    toks = _tokenize(text)
    size = len(toks)
    attrs: dict[str, Value] = {}
    lines: dict[str, int] = {}
    seen: set[str] = set()
    line, counted = 1, 0  # lines are counted once, forward, so a big JDL costs linear time
    bracketed = size > 0 and toks[0].text == "["
    i = 1 if bracketed else 0
    while True:
        if i >= size:
            if bracketed:
                raise _error(text, toks[-1].start, "missing ']' at the end")
            break
        tok = toks[i]
        line += text.count("\n", counted, tok.start)
        counted = tok.start
        if tok.text == "]":
            if not bracketed:
                raise _error(text, tok.start, "unexpected ']'", column=True)
            if i + 1 < size:
                raise _error(text, toks[i + 1].start, "unexpected text after the closing ']'")
            break
        if tok.text == ";":  # an empty statement, as DIRAC tolerates
            i += 1
            continue
        if tok.kind != "name":
            raise InvalidJDL(f"line {line}: expected an attribute name, got {tok.text!r}")
        if i + 1 >= size or toks[i + 1].text != "=":
            raise InvalidJDL(f"line {line}: expected '=' after {tok.text}")
        i, value = _read_value(toks, i + 2, text, tok)
        key = canonical_name(tok.text)
        if key.lower() in seen:  # ClassAd names are case-insensitive: JobName and jobname clash
            raise InvalidJDL(f"line {line}: duplicate attribute {tok.text}")
        seen.add(key.lower())
        attrs[key] = value
        lines[key] = line
    return attrs, lines


def _read_value(toks: list[_Tok], start: int, text: str, name: _Tok) -> tuple[int, Value]:
    """Collect the tokens of one value: up to a ``;`` or the closing ``]`` outside any nesting."""
    stack: list[_Tok] = []
    i = start
    while i < len(toks):
        tok = toks[i]
        c = tok.text
        if c == ";" or c == "]":
            if not stack:
                break
        if c == "[" or c == "{":
            stack.append(tok)
            if len(stack) > MAX_DEPTH:
                raise _error(text, tok.start, f"nesting deeper than {MAX_DEPTH} levels")
        elif c == "]" or c == "}":
            if not stack:
                raise _error(text, tok.start, f"unexpected '{c}'", column=True)
            opened = stack.pop()
            if opened.text != _CLOSER_OF[c]:
                opened_on = text.count("\n", 0, opened.start) + 1
                raise _error(text, tok.start, f"'{c}' does not close the '{opened.text}' of line {opened_on}")
        elif c == "=" and not stack:
            # A lone '=' can only start the next attribute: the ';' before its name is missing.
            if i == start:
                break
            last = toks[max(i - 2, start)]
            raise _error(text, last.start, f"expected ';' after the value of {name.text}")
        i += 1
    if stack:
        raise _error(text, stack[-1].start, f"unclosed '{stack[-1].text}'")
    if i == start:
        raise _error(text, name.start, f"missing value for {name.text}")
    try:
        value, end = _literal(toks, start, i)
    except ValueError:  # int() refuses more than 4300 digits
        raise _error(text, toks[start].start, "number too long") from None
    if value is _NOT_LITERAL or end != i:
        value = Expression(text[toks[start].start : toks[i - 1].end])
    return i, value  # type: ignore[return-value]


def _literal(toks: list[_Tok], j: int, stop: int) -> tuple[object, int]:
    """A literal starting at ``toks[j]`` and the index after it, or ``_NOT_LITERAL``."""
    tok = toks[j]
    if tok.kind == "string":
        body = tok.text[1:-1]
        if "\\" in body:
            body = _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)
        return body, j + 1
    if tok.kind == "number":
        return int(tok.text) if tok.text.isdigit() else float(tok.text), j + 1
    if tok.kind == "name" and tok.text.lower() in ("true", "false"):
        return tok.text.lower() == "true", j + 1
    if tok.text == "-" and j + 1 < stop and toks[j + 1].kind == "number":
        number, end = _literal(toks, j + 1, stop)
        return -number, end  # type: ignore[operator]
    if tok.text != "{":
        return _NOT_LITERAL, j
    items: list[object] = []
    j += 1
    while j < stop:
        if toks[j].text == "}":  # also accepts a trailing comma, as DIRAC's list reader does
            return items, j + 1
        item, j = _literal(toks, j, stop)
        if item is _NOT_LITERAL or j >= stop:
            return _NOT_LITERAL, j
        items.append(item)
        if toks[j].text == ",":
            j += 1
        elif toks[j].text != "}":
            return _NOT_LITERAL, j
    return _NOT_LITERAL, j


# ---------------------------------------------------------------- writing

def dumps(attrs: Mapping[str, Value]) -> str:
    """JDL text in DIRAC's layout; ``parse(dumps(x)) == x`` for any mapping ``parse`` returns."""
    out = ["["]
    for key, value in _normalise(attrs).items():
        if not _NAME_RE.fullmatch(key):
            raise InvalidJDL(f"{key!r} is not a valid attribute name")
        text = _format(value, key, "        ")
        out.append(f"    {key} =\n        {text};" if text.startswith("{\n") else f"    {key} = {text};")
    out.append("]")
    return "\n".join(out) + "\n"


def _format(value: object, key: str, indent: str | None = None, depth: int = 0) -> str:
    """``value`` as JDL text; ``indent=None`` gives one unchecked line, for error messages."""
    strict = indent is not None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.translate(_QUOTE) + '"'
    if isinstance(value, int):
        return str(int(value))  # int(): an IntEnum would print its name
    if isinstance(value, float) and (math.isfinite(value) or not strict):
        return repr(float(value))
    if isinstance(value, Expression):
        if strict and depth:
            raise InvalidJDL(f"{key}: an expression inside a list would not read back; make the list one")
        if strict:
            _check_expression(value, key)
        return value.text
    if isinstance(value, (list, tuple)) and depth < MAX_DEPTH:
        if indent is None:
            return "{" + ", ".join(_format(v, key, None, depth + 1) for v in value) + "}"
        inner = indent + "    "
        items = ",\n".join(inner + _format(v, key, inner, depth + 1) for v in value)
        return "{\n" + items + "\n" + indent + "}" if value else "{}"
    if strict:
        raise InvalidJDL(f"{key}: {_show(value)} cannot be written in a JDL")
    return repr(value)


def _check_expression(expr: Expression, key: str) -> None:
    """Refuse text that would not read back as this one expression (``a; b``, a trailing comment)."""
    try:
        if _parse(f"X = {expr.text}")[0] == {"X": expr}:
            return
    except InvalidJDL:
        pass
    raise InvalidJDL(f"{key}: {_show(expr)} is not a single JDL expression")


def _show(value: object) -> str:
    """A value on one short line, as a JDL would have it, for error messages."""
    text = " ".join(_format(value, "").split("\n"))
    return text if len(text) <= 60 else text[:57] + "..."


def _normalise(attrs: Mapping[str, Value]) -> dict[str, Value]:
    """Known names in DIRAC's spelling; two names equal but for case are one attribute twice."""
    out: dict[str, Value] = {}
    seen: set[str] = set()
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise InvalidJDL(f"attribute names must be strings, got {key!r}")
        if key.lower() in seen:
            raise InvalidJDL(f"duplicate attribute {key}")
        seen.add(key.lower())
        out[canonical_name(key)] = value
    return out


# ---------------------------------------------------------------- the typed description

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
        attrs, lines = _parse(text)
        try:
            return cls.from_attrs(attrs)
        except InvalidJDL as e:
            line = lines.get(str(e.ids.get("attribute")))
            if line is None:
                raise
            raise InvalidJDL(f"line {line}: {e.message}", **e.ids) from None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Value]) -> JobDescription:
        a = _normalise(attrs)
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
    raise InvalidJDL(f"{key} must be a string, got {_show(value)}", attribute=key)


def _texts(a: Mapping[str, Value], key: str, drop: set[str] | None = None) -> tuple[str, ...]:
    """A single string or a list, as DIRAC accepts; duplicates and empty entries dropped."""
    value = a.get(key, [])
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise InvalidJDL(f"{key} must be a string or a list of strings, got {_show(value)}",
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
        raise InvalidJDL(f"{key} must be {what}, got {_show(value)}", attribute=key)
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
    a = _normalise(attrs)
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
            f"Parameters must be a list or a positive integer, got {_show(value)}", attribute="Parameters"
        )
    return count


def expand_parametric(attrs: Mapping[str, Value], max_jobs: int) -> list[dict[str, Value]]:
    """One attribute mapping per job; a description without ``Parameters`` gives itself.

    In every string (in lists and raw expressions too: DIRAC substitutes in the whole text)
    ``%s`` becomes the parameter and ``%n`` its 0-based index, zero-padded to the width of the
    last index as DIRAC does; ``%j`` stays for ``substitute_job_id``. The ``Parameter*`` inputs
    are replaced by ``Parameter`` (the value) and ``ParameterNumber`` (the index).
    """
    a = _normalise(attrs)
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
        marks = {"%s": _show(value) if isinstance(value, bool) else str(value), "%n": str(index).zfill(width)}

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
                raise InvalidJDL(f"Parameters must hold strings or numbers, got {_show(item)}",
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
        raise InvalidJDL(f"{key} must be a number, got {_show(value)}", attribute=key)
    return number
