"""The configuration tree: YAML files merged, read into typed objects, held as versioned snapshots.

The tree has DIRAC's sections (Registry, Resources, Operations, Systems). A ``Local`` section holds
what belongs to one server process only (database URL, host certificate, port): it is stripped
before the tree is stored and served, so secrets never leave the host.

Components never read raw strings by path on the hot path: they read ``options(...)`` into a
frozen dataclass of their own, and ``Registry`` answers identity questions.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import threading
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from vmdirac.core.exceptions import ConfigurationError

LOCAL_SECTION = "Local"


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_yaml(text: str, source: str = "configuration") -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigurationError(f"{source}{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: the top level must be a mapping")
    return data


def load_files(paths: list[str | Path]) -> dict:
    tree: dict = {}
    for path in paths:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigurationError(f"cannot read configuration {path}: {e.strerror}") from e
        tree = deep_merge(tree, parse_yaml(text, str(path)))
    return tree


def dump_yaml(tree: dict) -> str:
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)


def served_part(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != LOCAL_SECTION}


def content_hash(tree: dict) -> str:
    return hashlib.sha256(dump_yaml(tree).encode()).hexdigest()


def get_path(tree: dict, path: str, default: Any = None) -> Any:
    node: Any = tree
    for part in path.strip("/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


# ---------------------------------------------------------------- typed options

def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigurationError:
                continue
        raise ConfigurationError(f"{where}: {value!r} is not {kind}")
    if origin in (list, tuple):
        (item,) = typing.get_args(kind)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigurationError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigurationError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("yes", "true", "1", "on"):
            return True
        if str(value).lower() in ("no", "false", "0", "off"):
            return False
        raise ConfigurationError(f"{where}: {value!r} is not a boolean")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigurationError(f"{where}: {value!r} is not a number")
        try:
            return kind(value)
        except (TypeError, ValueError) as e:
            raise ConfigurationError(f"{where}: {value!r} is not {kind.__name__}") from e
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ConfigurationError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


T = typing.TypeVar("T")


def options(cls: type[T], section: dict | None, where: str) -> T:
    """Read a YAML section into the frozen dataclass ``cls``; unknown keys are errors."""
    section = section or {}
    if not isinstance(section, dict):
        raise ConfigurationError(f"{where}: expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigurationError(f"{where}: unknown option(s) {', '.join(unknown)}")
    values = {k: _coerce(v, hints[k], f"{where}/{k}") for k, v in section.items()}
    return cls(**values)


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Group:
    name: str
    vo: str
    properties: frozenset[str]
    job_share: float = 1000.0


@dataclass(frozen=True)
class User:
    name: str
    dn: str
    groups: tuple[str, ...]
    email: str = ""


@dataclass(frozen=True)
class Host:
    name: str
    dn: str
    properties: frozenset[str]


@dataclass(frozen=True)
class Registry:
    users: dict[str, User] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    default_group: str = ""
    users_by_dn: dict[str, User] = field(default_factory=dict)
    hosts_by_dn: dict[str, Host] = field(default_factory=dict)

    @classmethod
    def from_tree(cls, tree: dict) -> Registry:
        reg = tree.get("Registry") or {}
        groups = {}
        for name, g in (reg.get("Groups") or {}).items():
            g = g or {}
            groups[name] = Group(
                name=name,
                vo=str(g.get("VO", reg.get("DefaultVO", "vmdirac"))),
                properties=frozenset(_coerce(g.get("Properties", []), list[str], f"Registry/Groups/{name}")),
                job_share=float(g.get("JobShare", 1000)),
            )
        users = {}
        for name, u in (reg.get("Users") or {}).items():
            u = u or {}
            if "DN" not in u:
                raise ConfigurationError(f"Registry/Users/{name}: no DN")
            user_groups = _coerce(u.get("Groups", []), list[str], f"Registry/Users/{name}/Groups")
            for g in user_groups:
                if g not in groups:
                    raise ConfigurationError(f"Registry/Users/{name}: unknown group {g}")
            users[name] = User(name, str(u["DN"]), user_groups, str(u.get("Email", "")))
        hosts = {}
        for name, h in (reg.get("Hosts") or {}).items():
            h = h or {}
            if "DN" not in h:
                raise ConfigurationError(f"Registry/Hosts/{name}: no DN")
            props = _coerce(h.get("Properties", []), list[str], f"Registry/Hosts/{name}")
            hosts[name] = Host(name, str(h["DN"]), frozenset(props))
        return cls(
            users=users,
            groups=groups,
            hosts=hosts,
            default_group=str(reg.get("DefaultGroup", "")),
            users_by_dn={u.dn: u for u in users.values()},
            hosts_by_dn={h.dn: h for h in hosts.values()},
        )

    def default_group_of(self, user: User) -> str | None:
        if self.default_group in user.groups:
            return self.default_group
        return user.groups[0] if user.groups else None


@dataclass(frozen=True)
class Snapshot:
    """One version of the tree with what is derived from it; never changed once made."""

    version: int
    tree: dict
    registry: Registry

    @classmethod
    def make(cls, version: int, tree: dict) -> Snapshot:
        return cls(version, tree, Registry.from_tree(tree))

    def get(self, path: str, default: Any = None) -> Any:
        return get_path(self.tree, path, default)

    def options(self, cls: type[T], path: str) -> T:
        return options(cls, self.get(path), path)

    def service_urls(self, system_service: str) -> list[str]:
        system, _, service = system_service.partition("/")
        urls = self.get(f"Systems/{system}/URLs/{service}")
        if not urls:
            raise ConfigurationError(f"no URL configured for {system_service} (Systems/{system}/URLs/{service})")
        return [urls] if isinstance(urls, str) else list(urls)


class ConfigStore:
    """Holds the current snapshot; ``refresh()`` asks its source for a newer one.

    ``source(version)`` returns ``(version, tree)`` when a version newer than ``version`` exists,
    else ``None``. Readers take ``store.current`` once per piece of work and use that snapshot.
    """

    def __init__(self, source: Callable[[int], tuple[int, dict] | None], min_interval: float = 5.0):
        self._source = source
        self._lock = threading.Lock()
        self._current: Snapshot | None = None
        self._checked = 0.0
        self.min_interval = min_interval
        self._listeners: list[Callable[[Snapshot], None]] = []

    @property
    def current(self) -> Snapshot:
        if self._current is None:
            self.refresh(force=True)
        assert self._current is not None
        return self._current

    def on_change(self, listener: Callable[[Snapshot], None]) -> None:
        self._listeners.append(listener)

    def refresh(self, force: bool = False) -> bool:
        import time

        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < self.min_interval:
                return False
            self._checked = now
            have = self._current.version if self._current else 0
            found = self._source(have)
            if found is None:
                if self._current is None:
                    raise ConfigurationError("no configuration available")
                return False
            self._current = Snapshot.make(*found)
            snapshot = self._current
        for listener in self._listeners:
            listener(snapshot)
        return True

    @classmethod
    def fixed(cls, tree: dict, version: int = 1) -> ConfigStore:
        return cls(lambda have: (version, tree) if have < version else None)
