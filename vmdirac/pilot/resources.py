"""What the machine offers, read from the kernel: cores, memory, platform, load, disk.

Only reads; nothing here talks to a server. Values a pilot option sets take precedence (see
``config.PilotOptions``); these are the defaults when an option is left at 0 or empty.
"""

from __future__ import annotations

import os
import platform as _platform
import shutil
import socket
from pathlib import Path


def cores() -> int:
    """Cores this process may run on (the affinity mask, as a container or cgroup set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in kB (``MemTotal``, ``MemAvailable``, ...); empty when unreadable."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[name] = int(fields[0])
    except OSError:
        pass
    return out


def total_ram_mb() -> int:
    return meminfo().get("MemTotal", 0) // 1024


def platform_name() -> str:
    """DIRAC-style platform, ``<arch>-<os><major>`` (``x86_64-el9``) when ``/etc/os-release``
    says, else ``<system>_<arch>``. Sites and images usually set ``Platform`` explicitly."""
    arch = _platform.machine() or "unknown"
    release: dict[str, str] = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, eq, value = line.partition("=")
            if eq:
                release[key] = value.strip().strip('"')
    except OSError:
        pass
    ident, version = release.get("ID", ""), release.get("VERSION_ID", "").split(".")[0]
    names = {"rhel": "el", "centos": "el", "almalinux": "el", "rocky": "el", "fedora": "fc",
             "debian": "debian", "ubuntu": "ubuntu"}
    if ident and version:
        return f"{arch}-{names.get(ident, ident)}{version}"
    return f"{_platform.system() or 'Unknown'}_{arch}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return _platform.processor() or "unknown"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return 0.0


def free_disk_mb(path: str | Path) -> int:
    try:
        return shutil.disk_usage(path).free // (1024 * 1024)
    except OSError:
        return 0


def hostname() -> str:
    return socket.getfqdn() or socket.gethostname()
