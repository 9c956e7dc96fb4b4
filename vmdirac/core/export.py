"""Exported RPC methods: the ``@export`` decorator, argument checking, and the service base class.

An exported method is an ordinary method whose first argument after ``self`` is the ``Caller``;
its other parameters are annotated, and those annotations are the wire contract: the server
checks every argument against them before the call, so a wrong type is a clear 400, never a
500 from deep inside. Plain methods run in the server's thread pool (they may block on the DB);
``async def`` methods run on the IOLoop and must not block.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os
import socket
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

from vmdirac import __version__
from vmdirac.core.exceptions import BadRequest, NotAuthorized

# DIRAC's pseudo-properties: "all" is any caller with a certificate our CA signed, registered or
# not; "authenticated" is a caller the Registry knows (user in a valid group, or a host).
ALL = "all"
AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the identity behind the credential, as the Registry knows it."""

    dn: str
    username: str = ""
    group: str = ""
    vo: str = ""
    properties: frozenset[str] = frozenset()
    is_host: bool = False
    registered: bool = False
    credential_dn: str = ""     # the DN of the presented certificate (a proxy's own DN)
    last_cn: str = ""           # last CN of the presented certificate
    instance_id: int | None = None  # set for a per-VM credential: it acts for this instance only

    def has(self, *props: str) -> bool:
        return any(p in self.properties for p in props)

    def __str__(self) -> str:
        if self.instance_id is not None:
            return f"instance {self.instance_id}"
        if self.is_host:
            return f"host {self.username or self.dn}"
        if self.registered:
            return f"{self.username}@{self.group}"
        return self.dn

    def to_wire(self) -> dict:
        return {
            "DN": self.dn, "username": self.username, "group": self.group, "VO": self.vo,
            "properties": sorted(self.properties), "isHost": self.is_host, "instanceID": self.instance_id,
        }


def authorize(caller: Caller, allowed: frozenset[str], what: str) -> None:
    if ALL in allowed:
        return
    if not caller.registered:
        raise NotAuthorized(f"{caller.dn} is not registered: {what} needs a registered identity")
    if AUTHENTICATED in allowed or caller.properties & allowed:
        return
    raise NotAuthorized(f"{caller} may not call {what}: it needs one of {', '.join(sorted(allowed))}")


# ---------------------------------------------------------------- argument checking

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

def _type_name(kind: Any) -> str:
    if kind is Any:
        return "any value"
    if isinstance(kind, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "dict": "object", "list": "list", "bytes": "bytes", "datetime": "datetime"}.get(
            kind.__name__, kind.__name__)
    return str(kind).replace("typing.", "")


def check_value(value: Any, kind: Any, where: str) -> Any:
    """``value`` if it has the type ``kind`` (ints accepted as floats), else ``BadRequest``."""
    if kind is Any or kind is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(kind):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return check_value(value, arg, where)
            except BadRequest as e:
                errors.append(e)
        raise BadRequest(f"{where}: expected {_type_name(kind)}, got {type(value).__name__}")
    if origin is typing.Literal:
        if value in typing.get_args(kind):
            return value
        choices = ", ".join(repr(a) for a in typing.get_args(kind))
        raise BadRequest(f"{where}: {value!r} is not one of {choices}")
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise BadRequest(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(kind)
        item = args[0] if args else Any
        return [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise BadRequest(f"{where}: expected an object, got {type(value).__name__}")
        args = typing.get_args(kind)
        vkind = args[1] if len(args) == 2 else Any
        return {k: check_value(v, vkind, f"{where}[{k!r}]") for k, v in value.items()}
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:   # no column or offset takes more: a clear error, not a 500
                raise BadRequest(f"{where}: {value} does not fit a 64-bit integer")
            return value
    elif kind is dt.datetime:
        if isinstance(value, dt.datetime):
            return value
    elif isinstance(kind, type) and isinstance(value, kind):
        return value
    raise BadRequest(f"{where}: expected {_type_name(kind)}, got {type(value).__name__}")


@dataclass(frozen=True)
class ExportedMethod:
    name: str
    function: Callable[..., Any]
    properties: frozenset[str]
    params: tuple[tuple[str, Any, bool], ...]   # (name, type, required)
    is_async: bool

    def bind(self, args: list[Any]) -> list[Any]:
        required = sum(1 for _, _, req in self.params if req)
        if not required <= len(args) <= len(self.params):
            expected = str(required) if required == len(self.params) else f"{required} to {len(self.params)}"
            raise BadRequest(f"{self.name} takes {expected} argument(s), {len(args)} given")
        return [check_value(v, kind, f"{self.name}: argument {name}")
                for i, (v, (name, kind, _)) in enumerate(zip(args, self.params))]


def export(properties: Iterable[str] = (AUTHENTICATED,)) -> Callable[[Callable], Callable]:
    """Mark a service method as callable over RPC by callers holding one of ``properties``."""
    props = frozenset(properties)

    def mark(fn: Callable) -> Callable:
        fn.__vmdirac_export__ = props  # type: ignore[attr-defined]
        return fn

    return mark


def _describe(name: str, fn: Callable, props: frozenset[str]) -> ExportedMethod:
    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[2:]  # self, caller
    out = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"exported method {name}: only positional parameters are supported")
        out.append((p.name, hints.get(p.name, Any), p.default is inspect.Parameter.empty))
    return ExportedMethod(name, fn, props, tuple(out), inspect.iscoroutinefunction(fn))


class Service:
    """Base of every service. Subclasses set ``system`` and ``name`` and export methods.

    ``context`` is the ``ServiceContext`` of the process (configuration, DB engine, paths).
    """

    system: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def __init__(self, context: Any = None) -> None:
        self.context = context
        self.methods: dict[str, ExportedMethod] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            props = getattr(fn, "__vmdirac_export__", None)
            if props is not None:
                method = _describe(attr, fn, props)
                self.methods[attr] = ExportedMethod(
                    attr, getattr(self, attr), props, method.params, method.is_async)

    @property
    def full_name(self) -> str:
        return f"{self.system}/{self.name}"

    def initialize(self) -> None:
        """Create tables, read options: anything to do once before the first call."""

    def handlers(self) -> list[tuple]:
        """Extra Tornado routes of this service (e.g. streaming sandbox transfers), as
        ``(pattern, HandlerClass, kwargs)``; handlers derive from ``core.server.BaseHandler``
        and get ``app_state`` in their kwargs from the server."""
        return []

    # The three below never block: async, so they answer on the IOLoop without a thread hop.
    @export(properties=[ALL])
    async def ping(self, caller: Caller) -> dict:
        return {"service": self.full_name, "version": __version__, "host": socket.gethostname(),
                "pid": os.getpid(), "time": dt.datetime.now(dt.timezone.utc)}

    @export(properties=[ALL])
    async def whoami(self, caller: Caller) -> dict:
        return caller.to_wire()

    @export(properties=[ALL])
    async def echo(self, caller: Caller, value: Any) -> Any:
        return value
