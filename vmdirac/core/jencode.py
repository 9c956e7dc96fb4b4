"""JSON as DIRAC's JEncode writes it.

datetimes travel as ``{"__dCls": "dt", "obj": "YYYY-MM-DD HH:MM:SS"}`` (UTC, no fraction),
dates as ``{"__dCls": "date", "obj": "YYYY-MM-DD"}``, bytes as ``{"__dCls": "b64", "obj": ...}``.
Dict keys are strings on the wire. Decoded datetimes are UTC-aware.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"


def _default(obj: Any) -> Any:
    if isinstance(obj, dt.datetime):
        if obj.tzinfo is not None:
            obj = obj.astimezone(dt.timezone.utc)
        return {"__dCls": "dt", "obj": obj.strftime(DATETIME_FORMAT)}
    if isinstance(obj, dt.date):
        return {"__dCls": "date", "obj": obj.strftime(DATE_FORMAT)}
    if isinstance(obj, (bytes, bytearray)):
        return {"__dCls": "b64", "obj": base64.b64encode(obj).decode()}
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "to_wire"):
        return obj.to_wire()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _hook(obj: dict) -> Any:
    kind = obj.get("__dCls")
    if kind is None or len(obj) != 2 or "obj" not in obj:
        return obj
    value = obj["obj"]
    if kind == "dt":
        return dt.datetime.strptime(value, DATETIME_FORMAT).replace(tzinfo=dt.timezone.utc)
    if kind == "date":
        return dt.datetime.strptime(value, DATE_FORMAT).date()
    if kind == "b64":
        return base64.b64decode(value)
    return obj


def _stringify_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else str(k)): _stringify_keys(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_stringify_keys(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, default=_default, separators=(",", ":"))
    except TypeError:
        # json refuses non-string keys only when sort_keys... it converts ints itself, but
        # tuples and other keys need help: do the slow pass only when needed.
        return json.dumps(_stringify_keys(obj), default=_default, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    return json.loads(text, object_hook=_hook)
