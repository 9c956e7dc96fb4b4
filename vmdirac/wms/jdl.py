"""DIRAC's job description language (JDL), the syntax: parse ClassAd-style text, write it back.

Users write ClassAd-style text for ``dirac-wms-job-submit job.jdl``. ``parse`` turns it into an
ordered mapping that keeps every attribute (DIRAC keeps the ones it does not know, so do we);
``wms.job_description`` validates it into the typed view the WMS acts on and expands parametric
jobs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from vmdirac.core.exceptions import InvalidJDL


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
PARAMETRIC_KEYS = ("Parameters", "ParameterStart", "ParameterStep", "ParameterFactor")

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
    return parse_with_lines(text)[0]


def parse_with_lines(text: str) -> tuple[dict[str, Value], dict[str, int]]:
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
    for key, value in normalise(attrs).items():
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
        raise InvalidJDL(f"{key}: {show_value(value)} cannot be written in a JDL")
    return repr(value)


def _check_expression(expr: Expression, key: str) -> None:
    """Refuse text that would not read back as this one expression (``a; b``, a trailing comment)."""
    try:
        if parse_with_lines(f"X = {expr.text}")[0] == {"X": expr}:
            return
    except InvalidJDL:
        pass
    raise InvalidJDL(f"{key}: {show_value(expr)} is not a single JDL expression")


def show_value(value: object) -> str:
    """A value on one short line, as a JDL would have it, for error messages."""
    text = " ".join(_format(value, "").split("\n"))
    return text if len(text) <= 60 else text[:57] + "..."


def normalise(attrs: Mapping[str, Value]) -> dict[str, Value]:
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
