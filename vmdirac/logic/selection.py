"""DIRAC's selection dicts (attribute -> value or list, FromDate/ToDate), as the portal and the
monitoring calls send them: checked, and narrowed to what the caller may see."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable

from vmdirac.core.exceptions import InvalidArgument

NOTHING = ("\x00none",)  # an IN list no row matches: the caller asked only for what it may not see


def parse_time(value: Any, key: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, str):
        for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
            try:
                return dt.datetime.strptime(value, fmt).replace(tzinfo=dt.timezone.utc)
            except ValueError:
                continue
    raise InvalidArgument(f"{key}: {value!r} is not a date (YYYY-MM-DD [HH:MM[:SS]])")


def parse_selection(select: dict[str, Any], filterable: Iterable[str], id_key: str, what: str,
                    passthrough: Iterable[str] = ()) -> tuple[dict[str, tuple], dt.datetime | None,
                                                              dt.datetime | None, dict[str, Any]]:
    """``(values, since, until, passed)``: attribute -> allowed values, the FromDate/ToDate window,
    and the ``passthrough`` keys left to the caller. Integers for ``id_key``, strings elsewhere."""
    filterable, passthrough = tuple(filterable), tuple(passthrough)
    values: dict[str, tuple] = {}
    passed: dict[str, Any] = {}
    since = until = None
    for key, value in select.items():
        if key in ("FromDate", "ToDate"):
            t = parse_time(value, key)
            since, until = (t, until) if key == "FromDate" else (since, t)
            continue
        if key in passthrough:
            passed[key] = value
            continue
        if key not in filterable:
            raise InvalidArgument(f"cannot select {what} by {key}; use {', '.join(filterable)}, FromDate, ToDate")
        items = value if isinstance(value, list) else [value]
        if key == id_key:
            # isascii: str.isdigit also takes "²", which int() refuses.
            if not all((isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.isascii()
                                                                          and v.isdigit()) for v in items):
                raise InvalidArgument(f"{id_key} values must be integers")
            items = [int(v) for v in items]
            if not all(0 <= v < 2**63 for v in items):
                raise InvalidArgument(f"{id_key} values must be between 0 and 2**63 - 1")
        elif not all(isinstance(v, str) for v in items):
            raise InvalidArgument(f"{key} values must be strings")
        values[key] = tuple(items)
    return values, since, until, passed


def narrow(values: dict[str, tuple], allowed: dict[str, tuple]) -> dict[str, tuple]:
    """``values`` restricted to ``allowed`` (attribute -> what the caller may see)."""
    out = dict(values)
    for key, ok in allowed.items():
        out[key] = tuple(v for v in values.get(key, ok) if v in ok) or NOTHING
    return out
