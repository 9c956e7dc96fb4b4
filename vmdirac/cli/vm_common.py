"""What the dirac-vm-* commands share: the service, instance ids, and how figures are shown."""

from __future__ import annotations

from typing import Iterable

from vmdirac.core.exceptions import InvalidArgument

MANAGER = "WorkloadManagement/VirtualMachineManager"
PAGE = 1000   # the service's largest page


def parse_instance_ids(values: Iterable[str]) -> list[int]:
    """Instance ids from ``12`` and ``12,14``, in order, without repeats."""
    out: list[int] = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if not item.isdigit() or int(item) == 0:
                raise InvalidArgument(f"{item!r} is not an instance id")
            out.append(int(item))
    if not out:
        raise InvalidArgument("no instance id given")
    return list(dict.fromkeys(out))


def split_values(values: Iterable[str]) -> list[str]:
    """``--status Running --status Stalled,Stopping`` -> the three."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def duration(seconds: float | None) -> str:
    """``1d 02:03:04`` / ``02:03:04``; nothing for no figure."""
    if not seconds:
        return ""
    s = int(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def size(n: int | None) -> str:
    """Bytes in binary units, one decimal: ``1.5 MiB``."""
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
